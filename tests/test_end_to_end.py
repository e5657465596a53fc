"""The whole pipeline as a user runs it: every runnable block of README.md, as written, then the tables
each stage left, checked one against the other (read with delta-rs, no JVM).

The blocks run in a scratch checkout (``helpers.readme.scratch_checkout``: ``sim/``, ``jobs/``,
``conf/`` copied, ``.venv`` linked, the venv not on PATH, no SPARK_HOME / PYSPARK_* / MLflow settings,
PYTHONPATH naming the copy as the venv's editable install names the real checkout), one ``bash`` per
block so its variables reach its later lines. Its ``conf/pipeline.yaml`` is the checkout's with
``SMALL`` applied (24 users, 20 days of history, small windows and caps, Spark settings for tiny data);
the JVMs start with the C1 JIT only (``SPARK_SUBMIT_OPTS``). "Public datasets" (its own input and
lakehouse) runs alongside the others, which run in README order:
- "Running the jobs": ``generate_logs``, ``build_ubt`` and ``build_samples`` (backfills); the
  spark-submit block, with the Delta jars ``make setup`` cached;
- "Public datasets": ``import_dataset`` of a small MovieLens-100k written to ``./DIR`` (the README's
  placeholder; this is the import CLI's success test), then the count-mode replay;
- "Training": ``.venv/bin/horovodrun -np 2``, ``sim.train --np 2`` and the one-process run;
- "MLflow": ``sim.compare`` on those runs; ``mlflow ui`` started in the background, asked over HTTP for
  the training runs, stopped in teardown (on a free port, with a warning, if 5000 is taken).

Then, on what they wrote: the generator's reported counts are the rows of its tables and its re-run
with the same config commits nothing (the generator CLI's test); UBT(2024-06-30) holds exactly the
behaviors of its window; every impression of a samples date is a samples row or a reject of
build_samples; each training run read the rows of its dates, its logged ``auc`` is sklearn's AUC of its
logged test predictions, and ``sim.compare`` prints that AUC; a model that does not fit the samples is
refused before horovodrun starts.
"""
from __future__ import annotations

import datetime as dt
import re
import subprocess
import urllib.request
import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import free_port
from helpers.readme import (BlockRun, port_free, readme_blocks, readme_commands, rule_for, run_block,
                            scratch_checkout, scratch_env, write_movielens)
from helpers.servers import post_json, server
from helpers.tiny_data import TINY_SPARK_SETS

# Cold JVMs and two-rank trainings, one after the other; the machine that runs the tests may be busy.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]

# conf/pipeline.yaml of the scratch checkout: the checkout's with these overrides.
SMALL = ["generator.users=24", "generator.history_days=20", "generator.mean_behaviors_per_user=40",
         "generator.max_behaviors_per_user=200", "generator.heavy_users=1",
         "generator.impressions_per_user_day=4", "generator.items=2000", "generator.categories=20",
         "generator.topics=4", "validation.max_reject_ratio=0.5",
         "windows.long_days=10", "windows.short_days=3", "windows.long_count=40", "windows.short_count=10",
         "caps.long_cap=40", "caps.hard_k=20", "caps.short_cap=10",
         # Tiny data: no query compilation, one partition (the JVMs: SHORT_JVM_OPTS).
         "spark.conf.spark.driver.memory=1g", "spark.conf.spark.sql.shuffle.partitions=1", *TINY_SPARK_SETS]
ML_USERS = 30  # users of the small MovieLens in ./DIR; one target each: two impressions per user
ML_RATINGS = 12  # ratings per user
# Blocks that read and write nothing the others do (./DIR, ./lakehouse_ml-100k): run alongside them.
ALONGSIDE = ("Public datasets",)
GENERATE = ".venv/bin/python jobs/generate_logs.py --lakehouse ./lakehouse"  # as the README has it
LOG_TABLES = ("behaviors", "impressions", "rejects", "item_topics")

BLOCKS = readme_blocks()
RUN_BLOCKS = [b for b in BLOCKS if {r.kind if r else None for r in map(rule_for, b.commands)} == {"run"}]
SERVER_COMMANDS = [c for b in BLOCKS for c in b.commands if (r := rule_for(c)) and r.kind == "server"]


def _table(path: Path, columns: list[str] | None = None):
    from deltalake import DeltaTable
    return DeltaTable(str(path)).to_pandas(columns=columns)


def _versions(lake: Path) -> dict[str, int]:
    from deltalake import DeltaTable
    return {t: DeltaTable(str(lake / t)).version() for t in LOG_TABLES}


@pytest.fixture(scope="module")
def walkthrough(tmp_path_factory) -> dict:
    """The scratch checkout after every runnable block ran (those of ALONGSIDE in a second thread, the
    others in README order, none after one of them failed), then the generator's command once more."""
    from sim.adapters.spark import delta_jars
    if not delta_jars():
        pytest.fail("the Delta jars are not cached: run `make setup`")
    if any(rule_for(c) is None for c in readme_commands()):
        pytest.fail("README commands without a check: see test_readme.test_every_readme_command_has_a_check")
    root = scratch_checkout(tmp_path_factory.mktemp("readme") / "checkout", SMALL)
    write_movielens(root / "DIR", users=ML_USERS, ratings_per_user=ML_RATINGS)
    env = scratch_env(root)
    runs: dict[int, BlockRun] = {}
    with ThreadPoolExecutor(1) as pool:
        alongside = {b.lineno: pool.submit(run_block, b, root, env, 1200) for b in RUN_BLOCKS
                     if b.section in ALONGSIDE}
        failed = False
        for block in RUN_BLOCKS:
            if block.lineno not in alongside:
                runs[block.lineno] = BlockRun(block) if failed else run_block(block, root, env, timeout=1200)
                failed = failed or runs[block.lineno].returncode != 0
        runs.update({k: f.result() for k, f in alongside.items()})
    for b in RUN_BLOCKS:
        print(f"README.md:{b.lineno} ({b.section}): exit {runs[b.lineno].returncode} "
              f"in {runs[b.lineno].seconds:.0f} s")
    out = {"root": root, "lake": root / "lakehouse", "runs": runs, "ok": not failed and all(
        r.returncode == 0 for r in runs.values())}
    if out["ok"]:  # the generator once more, with the same config: a no-op
        out["versions"] = _versions(out["lake"])
        again = subprocess.run(["bash", "-c", GENERATE], cwd=root, env=env, capture_output=True, text=True,
                               timeout=1200)
        assert again.returncode == 0, f"{GENERATE} (again) exited {again.returncode}\n{again.stderr[-4000:]}"
        out["generate_again"] = again.stdout  # its summary line; the log lines go to stderr
    return out


@pytest.fixture(scope="module")
def done(walkthrough) -> dict:
    """The walkthrough, for tests of what it wrote: every block must have passed."""
    if not walkthrough["ok"]:
        pytest.fail("a README block failed: see test_readme_block_runs_as_written")
    return walkthrough


def _output(w: dict, pattern: str) -> str:
    """The output of the one README command whose line matches ``pattern``."""
    (out,) = [c.output for r in w["runs"].values() for c in r.commands if re.match(pattern, c.command.line)]
    return out


def _conf(w: dict):
    from sim.config import load_pipeline_conf
    return load_pipeline_conf(w["root"] / "conf" / "pipeline.yaml")


def _experiments(w: dict) -> dict:
    import yaml
    return yaml.safe_load((w["root"] / "conf" / "experiments.yaml").read_text())


def _days(first: str, last: str) -> list[str]:
    a, b = dt.date.fromisoformat(first), dt.date.fromisoformat(last)
    return [(a + dt.timedelta(days=i)).isoformat() for i in range((b - a).days + 1)]


def _training_runs() -> dict[str, int]:
    """expid -> ranks, from the README's training commands."""
    out = {}
    for b in RUN_BLOCKS:
        for c in b.commands:
            m = re.search(r"-m sim\.train .*--expid (\S+)", c.line)
            if m:
                n = re.search(r"(?:^|\s)--?np (\d+)", c.line)
                out[m.group(1)] = int(n.group(1)) if n else 1
    return out


# ------------------------------------------------------------------------- the blocks, run as written
@pytest.mark.parametrize("lineno", [b.lineno for b in RUN_BLOCKS],
                         ids=[f"{b.section}@{b.lineno}" for b in RUN_BLOCKS])
def test_readme_block_runs_as_written(walkthrough, lineno):
    res = walkthrough["runs"][lineno]
    assert res.returncode is not None, "not run: an earlier block failed"
    assert res.returncode == 0, res.describe()
    for c in res.commands:
        marker = rule_for(c.command).marker
        assert c.ran and (marker is None or re.search(marker, c.output)), (
            f"{c.command}: no line matching {marker!r} in its output\n{res.describe()}")


# ------------------------------------------------------------------------------ what the stages wrote
def test_generator_reports_the_rows_of_its_tables(done):
    gen = _conf(done).generator
    lake = done["lake"]
    line = _output(done, re.escape(GENERATE)).strip().splitlines()[-1]
    m = re.match(r"generate_logs: behaviors=(\d+) \[(\S+)\.\.(\S+)\] impressions=(\d+) \[(\S+)\.\.(\S+)\] "
                 r"rejects=(\d+) ", line)
    assert m, line
    n_beh, n_imp, n_rej = int(m.group(1)), int(m.group(4)), int(m.group(7))
    end = str(gen.end_date)
    dates = _days((dt.date.fromisoformat(end) - dt.timedelta(days=gen.impression_days - 1)).isoformat(), end)
    assert (m.group(3), m.group(5), m.group(6)) == (end, dates[0], end)
    read, accepted, rejected = map(int, re.search(
        r"generator:behaviors read=(\d+) accepted=(\d+) rejected=(\d+)", line).groups())
    assert read == accepted + rejected and accepted == n_beh
    assert n_imp == gen.users * gen.impression_days * gen.impressions_per_user_day
    beh, imp = _table(lake / "behaviors", ["user_id", "dt"]), _table(lake / "impressions", ["dt"])
    rej = _table(lake / "rejects", ["source"])
    assert len(beh) == n_beh and beh.user_id.nunique() == gen.users
    assert imp.dt.value_counts().to_dict() == {d: gen.users * gen.impressions_per_user_day for d in dates}
    assert rej.source.str.startswith("generator:").sum() == n_rej


def test_generator_rerun_with_the_same_config_writes_nothing(done):
    first = _output(done, re.escape(GENERATE)).strip().splitlines()[-1]
    again = done["generate_again"].strip().splitlines()[-1]
    assert again.count("(unchanged, skipped)") == len(LOG_TABLES), again
    assert again.split("|")[1] == first.split("|")[1]  # the same counts read
    assert done["versions"] == _versions(done["lake"])  # and no commit


def test_ubt_holds_exactly_the_behaviors_of_its_window(done):
    """UBT(D) of the README's build_ubt: its segment rows, cut to the window (the oldest segment may
    hold older days), are the behaviors of the long window's dates up to D, one for one."""
    out = _output(done, r"\.venv/bin/python jobs/build_ubt\.py ")
    m = re.search(r"BUILD_UBT_OK date=(\S+) .*days=(\d+) .*\[(\S+):full, (.*)\]", out)
    assert m, out
    date, days = m.group(1), int(m.group(2))
    assert m.group(4).count(":nightly") == days - 1 >= 1, out
    lake = done["lake"]
    first = (dt.date.fromisoformat(date) - dt.timedelta(days=_conf(done).windows.long_days - 1)).isoformat()
    start = int(dt.datetime.fromisoformat(first).replace(tzinfo=dt.timezone.utc).timestamp())
    beh = _table(lake / "behaviors", ["user_id", "category_id", "item_id", "ts", "dt"])
    window = beh[(beh.dt >= first) & (beh.dt <= date)]
    ubt = _table(lake / "ubt", ["user_id", "category_id", "behaviors"])
    held = Counter((r.user_id, r.category_id, b["item_id"], b["ts"])
                   for r in ubt.itertuples() for b in r.behaviors if b["ts"] >= start)
    assert len(window) > 0 and sum(held.values()) == len(window)
    assert held == Counter(zip(window.user_id, window.category_id, window.item_id, window.ts))
    assert set(ubt.user_id) >= set(window.user_id) and set(ubt.user_id) <= set(beh.user_id)


def test_every_impression_becomes_a_sample_or_a_reject(done):
    """For every date the README's build_samples wrote, and those are the dates training reads."""
    out = _output(done, r"\.venv/bin/python jobs/build_samples\.py .*--lakehouse \./lakehouse$")
    reported = {m.group(1): (int(m.group(2)), int(m.group(3))) for m in re.finditer(
        r"BUILD_SAMPLES_OK date=(\S+) action=written .* samples=(\d+) rejected=(\d+)", out)}
    base = _experiments(done)["Base"]
    assert sorted(reported) == _days(str(base["train_dates"][0]), str(base["test_dates"][1])), out
    lake = done["lake"]
    imp = _table(lake / "impressions", ["impression_id", "dt"])
    samples = _table(lake / "samples", ["impression_id", "dt", "long_len"])
    rej = _table(lake / "rejects", ["source", "dt"])
    assert set(samples.dt) == set(reported)
    for d, (n_samples, n_rejected) in reported.items():
        ids = set(samples.impression_id[samples.dt == d])
        assert len(ids) == (samples.dt == d).sum() == n_samples > 0, d
        assert ((rej.source == "build_samples") & (rej.dt == d)).sum() == n_rejected, d
        assert (imp.dt == d).sum() == n_samples + n_rejected, d
        assert ids <= set(imp.impression_id[imp.dt == d]), d
    assert (samples.long_len > 0).any()  # the UBT's history reached the samples


def test_public_dataset_import_reports_and_replays_its_rows(done):
    ml = done["root"] / "lakehouse_ml-100k"
    samples, imps = _table(ml / "samples", ["dt"]), _table(ml / "impressions", ["dt"])
    assert len(samples) == len(imps) == 2 * ML_USERS
    # The import's summary line reports what it read and wrote (the CLI's failure on too many rejects:
    # test_importers.test_import_cli_fails_on_too_many_rejects).
    out = _output(done, r"\.venv/bin/python jobs/import_dataset\.py ")
    m = re.search(r"import_dataset\.movielens: behaviors=(\d+) .*impressions=(\d+) .*"
                  r"movielens:ratings read=(\d+) accepted=(\d+) rejected=(\d+)", out)
    assert m, out
    behaviors, impressions, read, accepted, rejected = map(int, m.groups())
    assert (impressions, read) == (2 * ML_USERS, ML_USERS * ML_RATINGS) and read == accepted + rejected
    assert behaviors == len(_table(ml / "behaviors", ["dt"])) > 0


def _tracked_runs(w: dict) -> tuple:
    """(MlflowClient, run name -> run) of the walkthrough's training runs."""
    from mlflow.tracking import MlflowClient
    client = MlflowClient(tracking_uri=f"sqlite:///{w['root'] / 'mlflow.db'}")
    exp = client.get_experiment_by_name(_experiments(w)["Base"]["experiment"])
    return client, {r.info.run_name: r for r in client.search_runs([exp.experiment_id])
                    if r.data.tags.get("kind") != "comparison"}


def test_each_run_read_its_dates_and_its_auc_recomputes_from_its_predictions(done):
    import pandas as pd
    from sklearn.metrics import roc_auc_score
    client, runs = _tracked_runs(done)
    expected = _training_runs()
    assert sorted(runs) == sorted(expected)
    base = _experiments(done)["Base"]
    samples = _table(done["lake"] / "samples", ["impression_id", "dt"])
    for expid, ranks in expected.items():
        r = runs[expid]
        assert r.info.status == "FINISHED" and r.data.params["horovod.size"] == str(ranks), expid
        for split in ("train", "valid", "test"):
            first, last = map(str, base[f"{split}_dates"])
            assert int(r.data.params[f"data.{split}_rows"]) == samples.dt.between(first, last).sum(), (expid, split)
        path = client.download_artifacts(r.info.run_id, "test_predictions.parquet",
                                          str(done["root"] / f"pred_{expid}"))
        pred = pd.read_parquet(path)
        test_ids = samples.impression_id[samples.dt.between(*map(str, base["test_dates"]))]
        assert len(pred) == len(test_ids) and set(pred.impression_id) == set(test_ids), expid  # each row once
        assert 0 < pred.label.sum() < len(pred), expid
        assert r.data.metrics["auc"] == pytest.approx(roc_auc_score(pred.label, pred.score), abs=1e-9), expid


def test_compare_prints_each_run_auc_for_its_model(done):
    out = _output(done, r"\.venv/bin/python -m sim\.compare ")
    _, runs = _tracked_runs(done)
    for expid, r in runs.items():
        rows = [line for line in out.splitlines() if line.startswith(expid + " ")]
        assert rows, out
        assert re.match(rf"{expid}\s+{r.data.metrics['auc']:.4f} ± 0\.0000 \(n=1\)$", rows[0]), rows[0]


def test_a_model_that_does_not_fit_the_samples_is_refused_before_training(done):
    """Each samples commit records the sizes it was built with; a model whose time-gap table is smaller
    than the samples' bucket ids (an index error at the first step, once) is refused before horovodrun."""
    proc = subprocess.run(
        ["bash", "-c", ".venv/bin/python -m sim.train --config conf/experiments.yaml --expid sim_hard --np 2 "
                       "--set model.time_gap_buckets=8"],
        cwd=done["root"], env=scratch_env(done["root"]), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "model.time_gap_buckets=8 but the samples hold time-gap bucket ids up to 63" in proc.stderr
    assert "launching" not in proc.stderr


# ------------------------------------------------------------------------------------------ mlflow ui
@pytest.fixture
def mlflow_ui(done):
    """The README's ``mlflow ui`` command started in the scratch checkout; yields its base URL and
    stops the server (its whole process group) afterwards."""
    root = done["root"]
    (cmd,) = SERVER_COMMANDS
    text = cmd.text
    port = int(m.group(1)) if (m := re.search(r"--port (\d+)", cmd.line)) else 5000
    if not port_free(port):
        new = free_port()
        warnings.warn(f"port {port} is taken on this machine: ran `{cmd.line}` with --port {new}")
        text = re.sub(r"--port \d+", f"--port {new}", text) if m else f"{text} --port {new}"
        port = new
    with server(text, f"http://127.0.0.1:{port}", root / "mlflow-ui.log", cwd=root, env=scratch_env(root)) as url:
        yield url


def test_mlflow_ui_serves_the_training_runs(mlflow_ui):
    with urllib.request.urlopen(mlflow_ui + "/", timeout=60) as r:
        assert r.status == 200 and "<html" in r.read().decode().lower()
    expected = _training_runs()
    assert expected, "no sim.train command in the README"
    exp = post_json(mlflow_ui + "/api/2.0/mlflow/experiments/get-by-name?experiment_name=sim-synthetic")
    runs = post_json(mlflow_ui + "/api/2.0/mlflow/runs/search",
                     {"experiment_ids": [exp["experiment"]["experiment_id"]], "max_results": 100})["runs"]
    got = {}
    for r in runs:
        tags = {t["key"]: t["value"] for t in r["data"].get("tags", [])}
        if tags.get("kind") == "comparison":  # the README's sim.compare
            continue
        params = {p["key"]: p["value"] for p in r["data"].get("params", [])}
        metrics = {m["key"] for m in r["data"].get("metrics", [])}
        got[r["info"]["run_name"]] = (r["info"]["status"], int(params.get("horovod.size", 0)), "auc" in metrics)
    assert got == {expid: ("FINISHED", ranks, True) for expid, ranks in expected.items()}
