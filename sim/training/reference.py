"""The gradient-boosting reference row: what a practitioner would try first on the numbers a samples row
already holds, computed on exactly the rows and split of the runs it is read against.

Not part of the paper. DESIGN.md ("What a practitioner compares with first"): a sequence model that
loses to a tree model on counts has not learned what its input holds. The reference is

- features (:data:`FEATURES`, version :data:`FEATURE_SET`) of each samples row, computed from the row
  alone plus the candidate item's point-in-time popularity (its behaviors on dates before the row's
  date, from the ``behaviors`` Delta table read by delta-rs, per item and ``dt``). The issue's eight
  counts, plus the category's share of the long sequence, the one addition that helped on the
  validation dates of the demo data (validation AUC 0.8075 with the eight, 0.8084 with the share;
  the time-gap bucket of the hard sequence's newest behavior 0.8070, of the candidate item's newest
  behavior 0.8075: left out);
- scikit-learn's ``HistGradientBoostingClassifier`` with fixed settings (:data:`GBDT_PARAMS`: 300
  iterations, learning rate 0.05, early stopping after 20 iterations without a better validation
  loss), fitted on the train dates, early-stopped on the validation dates given explicitly (never a
  random split of the train rows), scored on the test dates. Nothing is chosen on the test dates.
  As scikit-learn does, the model keeps the trees fitted after the best validation iteration (at most
  ``n_iter_no_change`` of them, at this learning rate a negligible difference).

The rows are read from the files of a :class:`~sim.training.experiment.DataManifest` per split (the
files a training run reads, each row once) with pyarrow; each file's ``dt`` comes from the samples
table's Delta log at the manifest's version (Spark does not store a partition column in the files).

Cached (:func:`cached_gbdt_reference`): every run of a samples snapshot and split gets the same figure,
and on the demo data (96,000 / 48,000 / 48,000 rows) reading, featurising and fitting cost rank 0 about
9 CPU-seconds (19-21 s wall on the shared two-core machine at a load of 8), which every model and seed
of ``make demo`` would pay again against its 15-minute budget. The key is everything the figure depends on: the manifest's files with their row counts (so
the samples version and the three date ranges), the ``behaviors`` table's path and version, the
feature set and the model's settings; the figures are a small JSON file per key under the runs'
checkpoint directory, ``<train.checkpoint_dir>/_references/`` (local to rank 0, unlike a lakehouse that
may be on S3). ``python -m
sim.training.reference`` computes it for any lakehouse and dates.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from sim.config.experiment import SPLITS
from sim.formats.packing import Ragged
from sim.training.experiment import DataManifest

log = logging.getLogger(__name__)

# Bump when a feature's definition changes: figures of two feature sets are not comparable.
FEATURE_SET = 1
FEATURES = (
    "item_popularity",       # the candidate item's behaviors on dates before the row's date
    "hard_len",              # behaviors of the candidate's category in the long window (capped at hard_k)
    "long_len",              # behaviors in the long window (uncapped)
    "short_len",
    "short_cat_count",       # the candidate's category in the short sequence
    "short_item_count",      # the candidate item in the short sequence
    "long_item_count",       # the candidate item in the stored long sequence
    "d_category",            # days since the user's last behavior in the candidate's category (-1: none)
    "long_cat_share",        # the category's share of the stored long sequence (NaN: empty)
)
GBDT_PARAMS = {"max_iter": 300, "learning_rate": 0.05, "early_stopping": True, "n_iter_no_change": 20,
               "scoring": "loss", "random_state": 0}
# Samples columns the features read (``dt`` is the file's partition, from the Delta log).
COLUMNS = ("impression_id", "item_id", "category_id", "label", "short_len", "hard_len", "long_len",
           "d_category", "short_items", "short_cats", "long_items", "long_cats")


@dataclasses.dataclass
class SplitRows:
    """The rows of one split: ids, labels, dates and the feature matrix (``N X len(FEATURES)``)."""
    impression_id: np.ndarray
    label: np.ndarray
    dt: np.ndarray
    features: np.ndarray


# ---------------------------------------------------------------------------------- row features
def _packed(column) -> tuple[np.ndarray, np.ndarray]:
    """(the elements of a packed sequence column as native int32, each row's bounds in them: ``N + 1``
    offsets). No per-element row index: the demo's long sequences hold tens of millions of elements."""
    r = Ragged.from_arrow(column, np.int32, convert=False)
    return r.values.astype(np.int32), np.concatenate([[0], np.cumsum(r.lengths)])


def _matches(column, target: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """(positions of the elements equal to their row's ``target``, in stored order; the row of each; the
    number of rows). Matches are few, so rows are looked up for them only."""
    values, bounds = _packed(column)
    pos = np.flatnonzero(values == np.repeat(target.astype(np.int32), np.diff(bounds)))
    return pos, np.searchsorted(bounds, pos, side="right") - 1, len(bounds) - 1


def count_equal(column, target: np.ndarray) -> np.ndarray:
    """Per row: how many elements of the packed sequence ``column`` equal the row's ``target``."""
    _, rows, n = _matches(column, target)
    return np.bincount(rows, minlength=n).astype(np.float64)


def row_features(table, popularity: np.ndarray) -> np.ndarray:
    """The :data:`FEATURES` of the samples rows of a pyarrow ``table`` (:data:`COLUMNS`), given each row's
    item popularity: ``N X len(FEATURES)`` float64, NaN for a missing value."""
    col = lambda c: table.column(c).to_numpy().astype(np.float64)  # noqa: E731
    item = table.column("item_id").to_numpy().astype(np.int64)
    cat = table.column("category_id").to_numpy().astype(np.int64)
    long_cat = count_equal(table.column("long_cats"), cat)
    stored_long = Ragged.from_arrow(table.column("long_cats"), convert=False).lengths.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(stored_long > 0, long_cat / stored_long, np.nan)
    by_name = {
        "item_popularity": np.asarray(popularity, dtype=np.float64),
        "hard_len": col("hard_len"), "long_len": col("long_len"), "short_len": col("short_len"),
        "short_cat_count": count_equal(table.column("short_cats"), cat),
        "short_item_count": count_equal(table.column("short_items"), item),
        "long_item_count": count_equal(table.column("long_items"), item),
        "d_category": col("d_category"),
        "long_cat_share": share,
    }
    return np.column_stack([by_name[f] for f in FEATURES])


# ------------------------------------------------------------------------- point-in-time popularity
def _day_numbers(dates: np.ndarray) -> np.ndarray:
    return np.asarray(dates, dtype="datetime64[D]").astype(np.int64)


def item_counts_before(behaviors_path: str, items: np.ndarray, dates: np.ndarray) -> np.ndarray:
    """Per (item, date) pair: the item's behaviors in the ``behaviors`` Delta table with ``dt`` before
    the date (a behavior on the date itself or later never counts), read by delta-rs.

    One read of the candidates' behaviors, counted per item and ``dt``; a pair's figure is the sum of
    its item's counts on earlier dates (a prefix sum over the (item, day) keys in order)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from sim.adapters.delta_io import open_log

    items = np.asarray(items, dtype=np.int64)
    days = _day_numbers(dates)
    if not len(items):
        return np.zeros(0)
    last = str(np.datetime64(int(days.max()), "D"))
    wanted = pa.array(np.unique(items))
    table = open_log(behaviors_path).to_pyarrow_dataset().to_table(
        columns=["item_id", "dt"], filter=(pc.field("dt") < last) & pc.field("item_id").isin(wanted))
    grouped = table.group_by(["item_id", "dt"]).aggregate([("item_id", "count")])
    b_items = grouped.column("item_id").to_numpy().astype(np.int64)
    b_days = _day_numbers(grouped.column("dt").to_numpy(zero_copy_only=False))
    counts = grouped.column("item_id_count").to_numpy().astype(np.int64)
    # Items as ranks, so (rank, day) packs into one sortable int64 key.
    universe = np.unique(np.concatenate([b_items, items]))
    base = int(min(b_days.min(initial=days.min()), days.min()))
    span = int(max(b_days.max(initial=days.max()), days.max())) - base + 1
    key = np.searchsorted(universe, b_items) * span + (b_days - base)
    order = np.argsort(key, kind="stable")
    key, prefix = key[order], np.concatenate([[0], np.cumsum(counts[order])])
    rank = np.searchsorted(universe, items)
    before = np.searchsorted(key, rank * span + (days - base), side="left")  # keys of earlier days
    first = np.searchsorted(key, rank * span, side="left")                   # the item's first key
    return (prefix[before] - prefix[first]).astype(np.float64)


# ------------------------------------------------------------------------------------ split rows
def _read_file(path: str, columns: Sequence[str]):
    import pyarrow.parquet as pq

    from sim.adapters import storage
    if not storage.is_remote(path):
        return pq.read_table(path.removeprefix("file://"), columns=list(columns))
    return pq.read_table(storage.bucket_key(path), columns=list(columns),
                         filesystem=storage.arrow_filesystem())


def file_dates(manifest: DataManifest) -> dict[str, str]:
    """``dt`` of each file of the manifest's samples snapshot, from its Delta log."""
    from sim.adapters.delta_io import log_snapshot
    snap = log_snapshot(manifest.samples_path, manifest.samples_version)
    return {f.path: dt for dt, f in snap.files}


def split_rows(manifest: DataManifest, split: str, behaviors_path: str,
               dates: dict[str, str] | None = None) -> SplitRows:
    """Every row of the manifest's files of ``split`` (each file once, in the manifest's order) with its
    features. Fails if a file holds another number of rows than the manifest lists."""
    import pyarrow as pa

    dates = dates if dates is not None else file_dates(manifest)
    tables, dts = [], []
    for path, rows in manifest.files[split]:
        if path not in dates:
            raise ValueError(f"{path} is not a file of {manifest.samples_path} version {manifest.samples_version}")
        t = _read_file(path, COLUMNS)
        if t.num_rows != rows:
            raise ValueError(f"{path} holds {t.num_rows} rows but the manifest lists {rows}")
        tables.append(t)
        dts.append(np.full(t.num_rows, dates[path], dtype=object))
    table = pa.concat_tables(tables).combine_chunks()
    dt = np.concatenate(dts) if dts else np.zeros(0, dtype=object)
    items = table.column("item_id").to_numpy().astype(np.int64)
    popularity = item_counts_before(behaviors_path, items, dt)
    return SplitRows(table.column("impression_id").to_numpy().astype(np.int64),
                     table.column("label").to_numpy().astype(np.int64), dt, row_features(table, popularity))


def data_statistics(manifest: DataManifest, split: str = "test") -> dict[str, float]:
    """What bounds the long-term models on the rows of ``split``: the share whose hard search found
    something (on the others a long-term model can only match DIN) and the median long-window length.
    Needs no behaviors table."""
    import pyarrow as pa
    t = pa.concat_tables([_read_file(p, ("hard_len", "long_len")) for p, _ in manifest.files[split]])
    hard, long = (t.column(c).to_numpy().astype(np.int64) for c in ("hard_len", "long_len"))
    if not len(hard):
        return {}
    return {"hard_nonempty_share": float((hard > 0).mean()), "long_len_median": float(np.median(long))}


def fit_gbdt(train: SplitRows, valid: SplitRows):
    """The fixed-settings classifier fitted on ``train``, early-stopped on ``valid``."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    for name, rows in (("train", train), ("validation", valid)):
        if len(np.unique(rows.label)) < 2:
            raise ValueError(f"the {name} rows hold one label only: no gradient-boosting reference")
    model = HistGradientBoostingClassifier(**GBDT_PARAMS)
    return model.fit(train.features, train.label, X_val=valid.features, y_val=valid.label)


def gbdt_reference(manifest: DataManifest, behaviors_path: str) -> dict[str, float]:
    """``gbdt_auc`` (test), ``gbdt_val_auc`` and ``gbdt_iterations``, on exactly the manifest's files per
    split."""
    from sim.training.metrics import auc
    started = time.perf_counter()
    dates = file_dates(manifest)
    rows = {s: split_rows(manifest, s, behaviors_path, dates) for s in SPLITS}
    model = fit_gbdt(rows["train"], rows["valid"])
    score = lambda r: model.predict_proba(r.features)[:, 1]  # noqa: E731
    out = {"gbdt_auc": auc(rows["test"].label, score(rows["test"])),
           "gbdt_val_auc": auc(rows["valid"].label, score(rows["valid"])),
           "gbdt_iterations": float(model.n_iter_)}
    log.info("gradient-boosting reference on %s: %s (%.1f s)", manifest.samples_path, out,
             time.perf_counter() - started)
    return out


def cache_key(manifest: DataManifest, behaviors_path: str) -> str:
    """What the figures depend on, hashed: the manifest's files and row counts per split, the behaviors
    table and its version, the feature set and the model's settings."""
    from sim.adapters.delta_io import open_log
    key = {"files": manifest.files, "samples_path": manifest.samples_path,
           "samples_version": manifest.samples_version, "behaviors_path": behaviors_path,
           "behaviors_version": open_log(behaviors_path).version(), "feature_set": FEATURE_SET,
           "features": FEATURES, "params": GBDT_PARAMS}
    return hashlib.sha1(json.dumps(key, sort_keys=True, default=list).encode()).hexdigest()[:16]


def cached_gbdt_reference(manifest: DataManifest, behaviors_path: str, cache_dir: str | Path) -> dict[str, float]:
    """:func:`gbdt_reference`, read from ``cache_dir/gbdt-<key>.json`` when a run of the same key wrote it
    (:func:`cache_key`); written there otherwise (atomically: a concurrent run reads a whole file or
    none, and at worst computes the same figures again)."""
    path = Path(cache_dir) / f"gbdt-{cache_key(manifest, behaviors_path)}.json"
    if path.is_file():
        return json.loads(path.read_text())["metrics"]
    out = gbdt_reference(manifest, behaviors_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"samples_path": manifest.samples_path, "samples_version": manifest.samples_version,
              "behaviors_path": behaviors_path, "feature_set": FEATURE_SET, "metrics": out}
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as f:
        json.dump(record, f, indent=1)
    os.replace(f.name, path)
    return out


def manifest_for(lakehouse: str, dates: dict[str, tuple[str, str]], samples_table: str = "samples",
                 samples_version: int | None = None) -> DataManifest:
    """The files a run over these split ``dates`` would read (:func:`~sim.training.experiment.resolve_data`
    without the model check)."""
    from sim.adapters import delta_io
    path = delta_io.table_path(lakehouse, samples_table)
    snap = delta_io.log_snapshot(path, samples_version)
    files = {}
    for split in SPLITS:
        found = snap.between(*dates[split])
        if not found:
            raise ValueError(f"no samples for {split} dates {dates[split][0]}..{dates[split][1]} in {path} "
                             f"(version {snap.version}); dates present: {', '.join(snap.dates) or 'none'}")
        files[split] = [(f.path, f.num_rows) for f in found]
    return DataManifest(path, snap.version, files)


def main(argv: Sequence[str] | None = None) -> int:
    from sim.adapters import delta_io
    from sim.cli import setup_logging
    # scikit-learn's OpenMP threads spin while they wait; on a busy machine that cost 6x the CPU time.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    setup_logging(logging.WARNING)
    p = argparse.ArgumentParser(prog="python -m sim.training.reference",
                                description="The gradient-boosting reference AUC of a lakehouse's samples.")
    p.add_argument("--lakehouse", required=True)
    for split in SPLITS:
        p.add_argument(f"--{split}-dates", nargs="+", required=True, metavar="DATE",
                       help="first and last date (one date: that day only)")
    p.add_argument("--samples-table", default="samples")
    p.add_argument("--samples-version", type=int, default=None, help="default: the latest")
    args = p.parse_args(argv)
    dates = {}
    for split in SPLITS:
        given = getattr(args, f"{split}_dates")
        if len(given) > 2:
            p.error(f"--{split}-dates takes one or two dates")
        dates[split] = (given[0], given[-1])
    started = time.perf_counter()
    manifest = manifest_for(args.lakehouse, dates, args.samples_table, args.samples_version)
    out = {**gbdt_reference(manifest, delta_io.table_path(args.lakehouse, "behaviors")),
           **data_statistics(manifest)}
    print(json.dumps({"samples_path": manifest.samples_path, "samples_version": manifest.samples_version,
                      "feature_set": FEATURE_SET, **{f"{s}_rows": manifest.rows(s) for s in SPLITS}, **out,
                      "seconds": round(time.perf_counter() - started, 2)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
