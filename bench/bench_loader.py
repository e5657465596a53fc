"""Loader throughput on one process: the padded-list files and today's path against the packed format and
its loader, on the same rows; the raw pyarrow decode of the packed files (the format's limit on this
machine); and what a training step of each model consumes.

    python bench/bench_loader.py [--lakehouse DIR] [--rows 96000] [--passes 3] [--quick]

Rows: with ``--lakehouse`` the samples table's rows of the experiments' train dates (either layout: a
table written before the packed format works too); without it, ``--rows`` rows drawn in numpy with the
demo's sequence lengths (caps 50 / 200 / 1,000; long lengths Pareto-tailed with median ~160 and at most
600, as the demo's generator gives: measured on a demo table, long_len p10/p50/p90 = 111/166/490, short
mean 26, hard mean 13). Both layouts are written from those rows with pyarrow (snappy, one file per
48,000 rows like the demo's one file per date; the padded-list files in one row group per file as Spark
writes them, the packed ones in row groups of at most 128 MB, Spark's block size).

Measured, in this order, in this process:

- ``baseline``: the format and path the loader replaced: the padded-list files read row group by row
  group by Petastorm's batch reader with its own results reader (through pandas, one numpy array per
  row of a list column, stacked), then re-batched and trimmed with training's settings (batch 256,
  shuffled, trimmed, 16-batch buckets), on one thread. (:class:`~sim.training.loader.ShardedLoader`
  reads the padded-list layout faster now, from the Arrow tables; the baseline stays what it was.)
- ``loader``: the same loader over the packed files, with 1, 2 and 3 reader threads (the best counts);
- ``pyarrow``: ``pq.read_table`` of the packed files and the numpy views of their flat buffers
  (:meth:`~sim.formats.packing.Ragged.from_arrow` without conversion), no Petastorm, no batches; ``pyarrow_batches`` adds
  the loader's batching (shuffle, length buckets, per-batch padding), i.e. the loader without
  Petastorm (for reference);
- ``training``: forward + backward + optimizer step of each model on the loader's first 40 batches,
  already in memory (as ``sim.training.loop.run_epoch`` does, torch threads = cores), samples/s; each
  pass stops after 15 s.
- ``loader_files_per_batch``: the mean number of files a batch of the loader draws rows from (one
  file per 48,000 rows, as the demo writes one per date: its dates per batch).

Every throughput is the best of ``--passes`` passes (the machine is shared and noisy). The last line is
JSON with ``loader_rows_per_s``, ``baseline_rows_per_s``, ``pyarrow_rows_per_s``,
``training_samples_per_s`` (the fastest model's) and the rest.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from common import ROOT, best_of, loader_epoch  # first: it puts the checkout's sim on sys.path
from sim.formats.packing import PACKED, PACKED_COLUMNS, SEQUENCES, Ragged

CAPS = {"short": 50, "hard": 200, "long": 1000}
SCALARS = {"impression_id": np.int64, "user_id": np.int64, "item_id": np.int64, "category_id": np.int64,
           "ts": np.int64, "label": np.int32, "long_len": np.int32, "d_category": np.int32}
MODELS = ("din", "avgpool_long_din", "sim_hard", "sim_soft", "sim_soft_time", "dien", "mimn")
FILE_ROWS = 48_000
BLOCK_BYTES = 128 << 20


# ------------------------------------------------------------------------------------------- the rows
def demo_like(n: int, seed: int = 0) -> dict:
    """Rows with the demo's lengths: scalars, and per sequence field (flat values, lengths)."""
    rng = np.random.default_rng(seed)
    long_len = np.minimum(600, 80 + 120 * rng.pareto(1.5, n)).astype(np.int64)
    lengths = {"long": np.minimum(long_len, CAPS["long"]),
               "short": np.minimum(long_len, rng.integers(0, CAPS["short"] + 1, n)),
               "hard": np.minimum(long_len, np.where(rng.random(n) < 0.2, 0,
                                                     rng.exponential(16, n).astype(np.int64)))}
    cats = rng.integers(1, 201, n)
    data = {"impression_id": np.arange(n), "user_id": rng.integers(1, 3001, n), "item_id": rng.integers(1, 50_001, n),
            "category_id": cats, "ts": 1_719_500_000 + np.arange(n), "label": (rng.random(n) < 0.3).astype(np.int32),
            "long_len": long_len.astype(np.int32),
            "d_category": np.where(lengths["hard"] > 0, rng.integers(0, 180, n), -1).astype(np.int32)}
    for s, lens in lengths.items():
        total = int(lens.sum())
        data[f"{s}_items"] = (rng.integers(1, 50_001, total), lens)
        data[f"{s}_cats"] = ((np.repeat(cats, lens) if s == "hard" else rng.integers(1, 201, total)), lens)
        data[f"{s}_gaps"] = (rng.integers(1, 64, total), lens)
    return data


def from_lakehouse(lakehouse: str, max_rows: int) -> dict:
    """The train dates' rows of a samples table, in either layout, as :func:`demo_like` gives them."""
    from sim.adapters import delta_io
    from sim.config.experiment import load_experiment

    cfg = load_experiment(ROOT / "conf/experiments.yaml", "din", [f"lakehouse={lakehouse}"])
    first, last = cfg["train_dates"]
    files = [f.path for f in delta_io.log_snapshot(delta_io.table_path(lakehouse, "samples")).between(first, last)]
    table = pa.concat_tables([pq.read_table(f, columns=[*SCALARS, *PACKED_COLUMNS]) for f in files])
    table = table.slice(0, max_rows)
    data = {c: table.column(c).to_numpy() for c in SCALARS}
    for c in PACKED_COLUMNS:
        col = table.column(c).combine_chunks()
        if pa.types.is_binary(col.type):
            r = Ragged.from_arrow(col)
            data[c] = (r.values.astype(np.int64), r.lengths)
        else:  # padded lists: the real elements are the leading non-zero ids of the sequence
            s = c.rsplit("_", 1)[0]
            ids = table.column(f"{s}_items").combine_chunks()
            width = len(ids[0]) if len(ids) else 0
            lens = (ids.flatten().to_numpy().reshape(-1, width) != 0).sum(axis=1)
            dense = col.flatten().to_numpy().reshape(-1, width)
            data[c] = (dense[np.arange(width) < lens[:, None]], lens)
    return data


# ------------------------------------------------------------------------------------- the two layouts
def _offsets(lengths: np.ndarray, unit: int) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(lengths * unit)]).astype(np.int32)


def _padded_lists(values: np.ndarray, lengths: np.ndarray, cap: int, dtype) -> pa.Array:
    dense = np.zeros((len(lengths), cap), dtype=dtype)
    dense[np.arange(cap) < lengths[:, None]] = values
    return pa.ListArray.from_arrays(pa.array(np.arange(len(lengths) + 1, dtype=np.int32) * cap), pa.array(dense.ravel()))


def _packed(values: np.ndarray, lengths: np.ndarray) -> pa.Array:
    data = pa.py_buffer(values.astype(PACKED).tobytes())
    return pa.BinaryArray.from_buffers(pa.binary(), len(lengths), [None, pa.py_buffer(_offsets(lengths, 4).tobytes()), data])


def _rows_slice(data: dict, lo: int, hi: int) -> dict:
    out = {}
    for c, v in data.items():
        if isinstance(v, tuple):
            values, lens = v
            starts = np.concatenate([[0], np.cumsum(lens)])
            out[c] = (values[starts[lo]:starts[hi]], lens[lo:hi])
        else:
            out[c] = v[lo:hi]
    return out


def write_layouts(data: dict, out: Path) -> tuple[list, list]:
    """(padded-list files, packed files) as (path, rows), the same rows in the same order."""
    n = len(data["label"])
    old, new = [], []
    for i, lo in enumerate(range(0, n, FILE_ROWS)):
        part = _rows_slice(data, lo, min(n, lo + FILE_ROWS))
        rows = len(part["label"])
        scalars = {c: pa.array(part[c].astype(t)) for c, t in SCALARS.items()}
        lists = {c: _padded_lists(*part[c], CAPS[c.rsplit("_", 1)[0]], PACKED_COLUMNS[c]) for c in PACKED_COLUMNS}
        p = out / f"padded-{i}.parquet"
        pq.write_table(pa.table({**scalars, **lists}), p, compression="snappy", row_group_size=rows)
        old.append((str(p), rows))
        packed = pa.table({**scalars, **{c: _packed(*part[c]) for c in PACKED_COLUMNS}})
        group = max(1, min(rows, int(BLOCK_BYTES / (packed.nbytes / rows))))
        p = out / f"packed-{i}.parquet"
        pq.write_table(packed, p, compression="snappy", row_group_size=group)
        new.append((str(p), rows))
    return old, new


# --------------------------------------------------------------------------------------- measurements
def baseline_epoch(files, columns, batch: int) -> int:
    """The rows of ``files`` the way the loader read them before the packed format (see the docstring)."""
    from petastorm import make_batch_reader

    from sim.adapters.petastorm_io import file_urls, iter_batches, row_groups

    def groups():
        for g in row_groups(files):
            with make_batch_reader(file_urls([g.path]), schema_fields=list(columns), num_epochs=1,
                                   cur_shard=g.index, shard_count=g.groups, shuffle_row_groups=False,
                                   reader_pool_type="dummy", workers_count=1) as reader:
                yield from reader
    return sum(len(b["label"]) for b in iter_batches(groups(), columns, batch, shuffle_seed=[1, 0, 0],
                                                      trim=SEQUENCES, bucket_batches=16))


def _arrow_columns(path: str, columns, convert: bool = True) -> dict:
    t = pq.read_table(path, columns=list(columns))
    return {c: Ragged.from_arrow(t.column(c), PACKED_COLUMNS[c], convert) if c in PACKED_COLUMNS
            else t.column(c).to_numpy() for c in columns}


def pyarrow_decode(files, columns) -> int:
    """Read the packed files with pyarrow alone and view their flat buffers in numpy (no copy)."""
    return sum(len(_arrow_columns(path, columns, convert=False)["label"]) for path, _ in files)


def pyarrow_batches(files, columns, batch: int) -> int:
    """:func:`pyarrow_decode`, then the loader's batching (shuffle, length buckets, per-batch padding)."""
    from sim.adapters.petastorm_io import iter_batches
    groups = (_arrow_columns(path, columns) for path, _ in files)
    return sum(len(b["label"]) for b in iter_batches(groups, columns, batch, shuffle_seed=[1, 0, 0],
                                                      trim=SEQUENCES, bucket_batches=16))


def files_per_batch(files, columns, batch: int) -> float:
    """Mean distinct files per batch of one loader epoch (with training's settings): the files are
    written one per 48,000 rows, as the demo writes one per date, so this is its dates per batch."""
    from sim.training.loader import ShardedLoader
    ids = [pq.read_table(p, columns=["impression_id"]).column(0).to_numpy() for p, _ in files]
    source = np.concatenate([np.full(len(a), i) for i, a in enumerate(ids)])
    ids = np.concatenate(ids)
    order = np.argsort(ids)
    ids, source = ids[order], source[order]
    loader = ShardedLoader(files, columns, batch_size=batch, seed=1, trim=SEQUENCES, bucket_batches=16)
    return float(np.mean([len(np.unique(source[np.searchsorted(ids, b["impression_id"])]))
                          for b in loader.epoch(0)]))


def training_samples_per_s(expid: str, batches: list, warmup: int = 2, passes: int = 2,
                           budget_s: float = 15.0) -> float:
    """Samples/s of ``expid``'s training step on ``batches`` (after ``warmup`` of them), each pass
    stopping after ``budget_s`` seconds (at least 3 steps: MIMN takes seconds per step)."""
    import torch

    from sim.config.experiment import load_experiment
    from sim.models import build_model
    from sim.training.experiment import _to_tensors
    from sim.training.optim import make_optimizer

    cfg = load_experiment(ROOT / "conf/experiments.yaml", expid)
    torch.manual_seed(0)
    model = build_model(cfg["model"]["name"], {k: v for k, v in cfg["model"].items() if k != "name"})
    optimizer = make_optimizer(model, cfg["train"])
    columns = list(dict.fromkeys([*model.input_columns, "label"]))
    model.train()

    def step(b) -> None:
        t = _to_tensors({c: b[c] for c in columns})
        loss = model.loss(model(t), t["label"].float())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    for b in batches[:warmup]:
        step(b)
    timed = batches[warmup:]

    def run() -> int:
        start, rows = time.perf_counter(), 0
        for i, b in enumerate(timed):
            step(b)
            rows += len(b["label"])
            if i >= 2 and time.perf_counter() - start > budget_s:
                break
        return rows
    return best_of(passes, run)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lakehouse", help="read this lakehouse's samples (train dates) instead of drawing rows")
    p.add_argument("--rows", type=int, default=96_000, help="rows to draw (or at most to take)")
    p.add_argument("--passes", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--models", nargs="+", default=list(MODELS))
    p.add_argument("--quick", action="store_true", help="24,000 rows, one pass, 3 reader threads only")
    args = p.parse_args()
    if args.quick:
        args.rows, args.passes, args.workers = 24_000, 1, [3]
    import torch
    torch.set_num_threads(os.cpu_count() or 1)

    from sim.samples.contract import TRAINING_COLUMNS
    columns = list(TRAINING_COLUMNS)
    data = from_lakehouse(args.lakehouse, args.rows) if args.lakehouse else demo_like(args.rows)
    source = f"samples of {args.lakehouse}" if args.lakehouse else "numpy rows with the demo's lengths"
    with tempfile.TemporaryDirectory(prefix="bench_loader_") as tmp:
        old, new = write_layouts(data, Path(tmp))
        rows = sum(n for _, n in new)
        size = {k: sum(os.path.getsize(f) for f, _ in v) / rows for k, v in (("old", old), ("new", new))}
        groups = {k: sum(pq.ParquetFile(f).metadata.num_row_groups for f, _ in v) for k, v in (("old", old), ("new", new))}
        res: dict = {"rows": rows, "source": source, "cores": os.cpu_count(), "batch_size": args.batch_size,
                     "bytes_per_row_padded": round(size["old"]), "bytes_per_row_packed": round(size["new"]),
                     "row_groups_padded": groups["old"], "row_groups_packed": groups["new"]}
        res["baseline_rows_per_s"] = best_of(args.passes, lambda: baseline_epoch(old, columns, args.batch_size))
        per_workers = {}
        for w in args.workers:
            per_workers[w] = best_of(args.passes, lambda: loader_epoch(new, w, columns, args.batch_size))
        best_w = max(per_workers, key=per_workers.get)
        res["loader_rows_per_s"], res["loader_workers"] = per_workers[best_w], best_w
        res["loader_rows_per_s_by_workers"] = {str(k): round(v) for k, v in per_workers.items()}
        res["pyarrow_rows_per_s"] = best_of(args.passes, lambda: pyarrow_decode(new, columns))
        res["pyarrow_batches_rows_per_s"] = best_of(args.passes, lambda: pyarrow_batches(new, columns, args.batch_size))
        batches: list = []
        loader_epoch(new, best_w, columns, args.batch_size, keep=batches)
        res["loader_files_per_batch"] = files_per_batch(new, columns, args.batch_size)
        train = {m: training_samples_per_s(m, batches) for m in args.models}
    fastest = max(train, key=train.get)
    res["training_samples_per_s"], res["training_fastest_model"] = train[fastest], fastest
    res["training_samples_per_s_by_model"] = {m: round(v) for m, v in train.items()}
    res["loader_vs_baseline"] = res["loader_rows_per_s"] / res["baseline_rows_per_s"]
    res["loader_vs_pyarrow"] = res["loader_rows_per_s"] / res["pyarrow_rows_per_s"]
    res["loader_vs_training_min"] = res["loader_rows_per_s"] / train[fastest]

    print(f"{rows} rows ({source}); {res['cores']} cores; batch {args.batch_size}; bytes/row on disk: padded "
          f"{res['bytes_per_row_padded']}, packed {res['bytes_per_row_packed']}; row groups: padded "
          f"{groups['old']}, packed {groups['new']}")
    print(f"{'what':<52}{'rows/s':>10}")
    print(f"{'baseline: padded lists, the former path (1 thread)':<52}{res['baseline_rows_per_s']:>10.0f}")
    for w, v in per_workers.items():
        print(f"{f'loader: packed, ShardedLoader, {w} reader thread(s)':<52}{v:>10.0f}")
    print(f"loader: {res['loader_files_per_batch']:.2f} distinct files (dates, in the demo's layout) per batch "
          f"of {len(new)} files")
    print(f"{'pyarrow: read + decode packed files (no batches)':<52}{res['pyarrow_rows_per_s']:>10.0f}")
    print(f"{'pyarrow + the loader batching (no Petastorm)':<52}{res['pyarrow_batches_rows_per_s']:>10.0f}")
    for m, v in train.items():
        print(f"{f'training step: {m}':<52}{v:>10.0f}   loader / training = {res['loader_rows_per_s'] / v:.1f}")
    print(f"loader / baseline = {res['loader_vs_baseline']:.2f} (target >= 5); loader / pyarrow = "
          f"{res['loader_vs_pyarrow']:.2f} (target >= 0.8); loader / fastest training ({fastest}) = "
          f"{res['loader_vs_training_min']:.2f} (target >= 3)")
    print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in res.items()}))


if __name__ == "__main__":
    main()
