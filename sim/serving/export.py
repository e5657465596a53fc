"""The export job: UBT(D) from the lakehouse into the serving store, then the switch to it.

Reads the version of the ``ubt`` table the nightly run for D committed (Delta time travel, as the
samples job reads UBT(D-1)), restricted to the window the requests of D + 1 see, and writes per
(user, category) the key's newest ``caps.hard_k`` behaviors and per user the newest behaviors across
categories (:func:`sim.samples.transforms.user_recent`, the samples job's own function), the user's
window count and, in time mode, the times of the window's first day (read from ``behaviors``, as the
samples job does). Count mode (count windows on the nightly path) exports the whole UBT(D): no
behavior leaves a count window by time. Only when every row is written does the store switch to the
snapshot (sim.serving.store).

What the export read and with which settings is recorded with the snapshot (its ``meta``), as the
jobs record it with their commits (:func:`sim.adapters.lineage.run_record`): ``settings`` (the samples
settings the rows are built with, :attr:`SampleSpec.settings`), ``inputs`` (UBT(D) by its commit, and in
time mode the behaviors of the window's first day by their files) and their ``fingerprint``; plus
``ubt_version`` and ``lakehouse``. An export asked to skip what is done (``skip_done``, the nightly
command) writes nothing when the store holds UBT(D) from the same lakehouse with the same fingerprint.

Also the micro-batch of the append path: :func:`append_day` loads the behaviors of one date into the
store (replacing that date's), for the requests of that date.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from sim.adapters.delta_io import read_table, require_table, table_path
from sim.adapters.lineage import run_record, table_read
from sim.samples.contract import SampleSpec
from sim.samples.transforms import user_recent
from sim.serving.store import (CategoryRecord, SnapshotInfo, SnapshotNotServable, SnapshotStore,
                               StoreUnavailable, UserRecord)
from sim.ubt.dates import parse_date, shift_date, window_start_ts
from sim.ubt.transforms import in_window_rows, missing_key, ts_outside_dt

log = logging.getLogger(__name__)


@dataclass
class ExportResult:
    date: str
    ubt_version: int
    users: int
    keys: int
    snapshot: SnapshotInfo
    action: str = "written"  # or "skipped": the store held this export already (skip_done)


def export_record(spark: SparkSession, lakehouse: str, date: str, spec: SampleSpec) -> tuple[int, dict]:
    """(the version of UBT(``date``), what its export records: settings, inputs, fingerprint), after
    checking that UBT(date) fits ``spec`` as the samples job checks it (mode, long window: the rows the
    store serves must be the samples job's)."""
    from sim.samples.job import check_ubt_fits
    ubt_path = table_path(lakehouse, "ubt")
    require_table(spark, ubt_path, f"run `jobs/build_ubt.py --date {date}` first")
    version, ubt_read = check_ubt_fits(spark, ubt_path, date, spec)
    reads = {"ubt": ubt_read}
    if spec.windows.mode == "time":
        first_day = shift_date(date, 1 - spec.windows.long_days)
        reads["behaviors"] = table_read(spark, table_path(lakehouse, "behaviors"), f"dt = '{first_day}'").record()
    return version, run_record(spec.settings, reads)


def exported_snapshot(store: SnapshotStore, date: str) -> SnapshotInfo | None:
    """The snapshot of UBT(``date``) the store serves the requests of date + 1 from, None when it holds
    none (or cannot be read: the export will say why when it writes)."""
    try:
        with store.view(shift_date(date, 1)) as v:
            return v.info if v.info.date == date else None
    except (StoreUnavailable, SnapshotNotServable):
        return None


def export_ubt(spark: SparkSession, lakehouse: str, date: str, spec: SampleSpec, store: SnapshotStore,
               skip_done: bool = False) -> ExportResult:
    """Write UBT(``date``) into ``store`` and make it the current snapshot (for requests of date + 1).
    ``skip_done``: write nothing when the store holds UBT(date) exported from the same lakehouse with
    the same settings and inputs (the result's ``action`` is ``skipped``)."""
    date = parse_date(date).isoformat()
    w, c = spec.windows, spec.caps
    ubt_path = table_path(lakehouse, "ubt")
    version, record = export_record(spark, lakehouse, date, spec)
    if skip_done:
        done = exported_snapshot(store, date)
        if (done is not None and done.meta.get("fingerprint") == record["fingerprint"]
                and done.meta.get("lakehouse") == lakehouse):
            log.info("export_ubt %s: %s holds it (generation %s) with these settings and inputs; nothing to do",
                     date, store.name, done.generation)
            return ExportResult(date, version, 0, 0, done, "skipped")
    # What the samples job does with UBT(D-1) for the impressions of D = date + 1.
    rows = in_window_rows(read_table(spark, ubt_path, version), window_start_ts(w, date))
    safe_from = window_start_ts(w, shift_date(date, 1))
    recent = user_recent(rows, spec.recent_n, safe_from)
    if w.mode == "time":  # the behaviors that leave the long window during date + 1
        first_day = shift_date(date, 1 - w.long_days)
        behaviors = read_table(spark, table_path(lakehouse, "behaviors")).where(~missing_key())
        first = (behaviors.where(F.col("dt") == first_day).groupBy(F.col("user_id").cast("long").alias("user_id"))
                 .agg(F.collect_list(F.col("ts").cast("long")).alias("first_day_ts")))
        users = recent.join(first, "user_id", "full_outer")
    else:  # count mode: no window leaves by time
        users = recent.withColumn("first_day_ts", F.array().cast("array<long>"))
    tops = F.flatten(F.collect_list(F.slice("behaviors", 1, c.hard_k)))
    keys = (rows.groupBy("user_id", "category_id")
            .agg(F.max("last_ts").alias("last_ts"), F.slice(F.sort_array(tops, asc=False), 1, c.hard_k).alias("_top"))
            .select("user_id", "category_id", "last_ts", F.transform("_top", lambda b: b["ts"]).alias("ts"),
                    F.transform("_top", lambda b: b["item_id"]).alias("items")))
    meta = {"ubt_version": version, "lakehouse": lakehouse, **record}
    writer = store.new_snapshot(date, meta)

    def arr(v) -> np.ndarray:
        return np.asarray(v if v is not None else [], dtype=np.int64)

    n_users = writer.put_users(
        (r.user_id, UserRecord(arr(r.r_ts), arr(r.r_items), arr(r.r_cats), int(r.ubt_count or 0),
                               arr(r.first_day_ts)))
        for r in users.toLocalIterator())
    n_keys = writer.put_categories(
        (r.user_id, r.category_id, CategoryRecord(arr(r.ts), arr(r.items), int(r.last_ts)))
        for r in keys.toLocalIterator())
    info = writer.switch()
    log.info("export_ubt %s: UBT version %s -> %s: %d users, %d keys", date, version, store.name, n_users, n_keys)
    return ExportResult(date, version, n_users, n_keys, info)


def append_day(spark: SparkSession, lakehouse: str, date: str, store: SnapshotStore) -> int:
    """The micro-batch of the append path: the behaviors of ``date`` (those the samples job reads:
    with ids and time) into ``store``, replacing what it held for that date. Returns the rows loaded."""
    date = parse_date(date).isoformat()
    path = table_path(lakehouse, "behaviors")
    require_table(spark, path, "run jobs/generate_logs.py or jobs/import_dataset.py first")
    # A row whose time is not of its date is rejected by the importers; it has no day to be served on.
    day = (read_table(spark, path).where((F.col("dt") == date) & ~missing_key() & ~ts_outside_dt())
           .select(*[F.col(x).cast("long") for x in ("user_id", "ts", "item_id", "category_id")]))
    return store.load_day(date, ((r[0], r[1], r[2], r[3]) for r in day.toLocalIterator()))
