"""The benchmarks' plumbing, without Spark and in seconds: the summary of `make bench` reads each
benchmark's last JSON line and names a benchmark whose output has none; the benchmarks share one module,
not each other; bench_train's rows are the worst case it claims (every sequence at its cap) and its
measurement trains a real model on them."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import bench_train  # noqa: E402
import summary  # noqa: E402
from sim.formats.packing import PACKED_COLUMNS, SEQUENCES, Ragged, seq_columns  # noqa: E402


def test_last_json_reads_the_final_line_and_refuses_output_without_one():
    out = "some table\nrow 1\n" + json.dumps({"bench": "b", "rate": 12.5, "nested": {"x": 1}}) + "\n\n"
    assert summary.last_json(out, "b") == {"bench": "b", "rate": 12.5, "nested": {"x": 1}}
    # A JSON line that is not the last line does not count: the figures must close the output.
    with pytest.raises(summary.MissingFigures, match=r"bench_x: .*does not end with a JSON object.*'done'"):
        summary.last_json('{"rate": 1}\ndone\n', "bench_x")
    with pytest.raises(summary.MissingFigures, match="bench_y: no output"):
        summary.last_json("\n \n", "bench_y")
    with pytest.raises(summary.MissingFigures, match="does not end with a JSON object"):
        summary.last_json("[1, 2]\n", "bench_z")  # JSON, but not an object of figures


def test_summary_table_from_logs_and_exit_status(tmp_path, capsys):
    good = tmp_path / "bench_good.log"
    good.write_text("header\n" + json.dumps({"bench": "bench_good", "rows_per_s": 37969.4,
                                              "by_model": {"din": 7934, "mimn": 182.0}, "same_rows": True}))
    assert summary.main([str(good)]) == 0
    text = capsys.readouterr().out
    lines = {tuple(ln.split()) for ln in text.splitlines()}
    assert ("bench_good", "rows_per_s", "37,969") in lines
    assert ("bench_good", "by_model.din", "7,934") in lines and ("bench_good", "by_model.mimn", "182") in lines
    assert ("bench_good", "same_rows", "true") in lines
    bad = tmp_path / "bench_bad.log"
    bad.write_text("it crashed before its figures\nTraceback ...\n")
    assert summary.main([str(good), str(bad)]) == 1
    text = capsys.readouterr().out
    assert "bench_good" in text and "FAILED bench_bad: its output does not end with a JSON object" in text


def test_no_benchmark_imports_another():
    """What more than one benchmark uses is in bench/common.py: no module of bench/ imports a benchmark."""
    import ast
    bench = Path(summary.__file__).parent
    found = []
    for path in sorted(bench.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            found += [f"{path.name}:{node.lineno} imports {n}" for n in names if n.split(".")[0] in summary.BENCHES]
    assert not found, found


def test_bench_train_rows_are_full_length(tmp_path):
    files = bench_train.write_rows(tmp_path, 20, file_rows=16)
    assert [n for _, n in files] == [16, 4]
    table = pq.read_table(files[0][0])
    for s in SEQUENCES:
        for c in seq_columns(s):
            lengths = Ragged.from_arrow(table.column(c), PACKED_COLUMNS[c]).lengths
            assert (lengths == bench_train.CAPS[s]).all(), c
    hard = Ragged.from_arrow(table.column("hard_cats")).dense(bench_train.CAPS["hard"])
    assert (hard == table.column("category_id").to_numpy()[:, None]).all()  # hard search: the candidate's category


def test_bench_train_measure_trains_one_model(tmp_path):
    batch = 8
    files = bench_train.write_rows(tmp_path / "rows", bench_train.POOL * batch)
    r = bench_train.measure("din", files, steps=3, warmup=1, batch_size=batch, threads=1, workdir=str(tmp_path))
    assert r["model"] == "din" and r["steps"] == 3 and r["rows"] == 3 * batch and r["threads"] == 1
    assert r["samples_per_s"] > 0 and r["samples_per_cpu_s"] > 0 and np.isfinite(r["seconds"])
    assert 0 < r["loss"] < 5  # a binary cross-entropy of a model that trained on the rows
    assert set(bench_train.experiment_ids()) >= {"din", "mimn", "sim_hard", "sim_soft_time"}
