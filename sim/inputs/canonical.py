"""Canonical input logs: the ``behaviors``, ``impressions`` and ``rejects`` tables every later stage reads.

The schemas live in :mod:`sim.inputs.schema` (``BEHAVIORS``, ``IMPRESSIONS``, ``REJECTS``); this module turns a
DataFrame into exactly that shape (column order, types, ``dt`` derived from ``ts``) and writes the three
tables as Delta tables partitioned by ``dt`` under a lakehouse root (DESIGN.md "Data model"). They are
the paper's raw material: B = [b1..bT] per user (item, category, time, type) and the shown candidates
a with their click label.

Conventions:
- ``ts`` is epoch seconds (UTC); ``dt`` is the UTC ``yyyy-MM-dd`` of ``ts``, computed without the
  session time zone (:func:`dt_of`), so a job run under any ``spark.sql.session.timeZone`` agrees.
- ids are positive longs; 0 is the padding id downstream and never a real id (:func:`stable_id`
  hashes string ids such as Amazon ASINs onto positive ids, deterministically); item and category ids
  fit in 31 bits (:data:`SEQUENCE_ID_MAX`), user and impression ids may use 63.
- Writes go through :func:`sim.adapters.delta_io.write_date` (txnAppId, userMetadata ``{"job", "date"}``).
  :func:`write_log_table` adds a content fingerprint to the metadata: a re-run with the same inputs and
  options is skipped, a re-run with other ones replaces the same range (``replaceWhere``).
"""
from __future__ import annotations

import hashlib
import json
import logging
from typing import Mapping

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from sim.adapters import delta_io
from sim.inputs.schema import BEHAVIORS, IMPRESSIONS, REJECTS
# Item and category ids are sequence elements of the samples, stored as int32: they fit in 31 bits.
from sim.formats.packing import ID_MAX as SEQUENCE_ID_MAX  # noqa: F401  (the importers use it)

log = logging.getLogger(__name__)

BEHAVIORS_TABLE = "behaviors"
IMPRESSIONS_TABLE = "impressions"
_MAX_LONG = 0x7FFFFFFFFFFFFFFF


def dt_of(ts: Column) -> Column:
    """UTC ``yyyy-MM-dd`` of epoch seconds, independent of the session time zone."""
    return F.date_format(F.date_from_unix_date(F.floor(ts / F.lit(86400)).cast("int")), "yyyy-MM-dd")


def day_start_ts(date: str) -> int:
    """Epoch seconds of 00:00 UTC of ``date`` ('yyyy-MM-dd')."""
    import datetime as _dt
    d = _dt.date.fromisoformat(date)
    return int(_dt.datetime(d.year, d.month, d.day, tzinfo=_dt.timezone.utc).timestamp())


def stable_id(value: Column, max_id: int = _MAX_LONG) -> Column:
    """A positive id from a string (xxhash64 masked to ``max_id``, a power of two minus one; 0 mapped
    to 1). Null stays null, and so does an empty or blank string. Item and category ids use
    :data:`SEQUENCE_ID_MAX` (the samples store them as int32): 31 bits, where the models hash ids into
    far fewer rows anyway (``model.item_buckets``), so the extra collisions cost nothing there."""
    v = F.trim(value.cast("string"))
    h = F.xxhash64(v).bitwiseAND(F.lit(max_id))
    return F.when(v.isNull() | (v == ""), F.lit(None).cast("long")).when(h == 0, F.lit(1).cast("long")) \
        .otherwise(h)


def conform(df: DataFrame, schema: T.StructType) -> DataFrame:
    """``df`` with exactly the columns of ``schema``, in order and cast; ``dt`` derived from ``ts`` when
    missing."""
    if "dt" not in df.columns and "ts" in df.columns:
        df = df.withColumn("dt", dt_of(F.col("ts")))
    cols = []
    for f in schema.fields:
        c = F.col(f.name) if f.name in df.columns else F.lit(None)
        cols.append(c.cast(f.dataType).alias(f.name))
    return df.select(*cols)


def to_behaviors(df: DataFrame) -> DataFrame:
    return conform(df, BEHAVIORS)


def to_impressions(df: DataFrame) -> DataFrame:
    return conform(df, IMPRESSIONS)


def to_rejects(df: DataFrame, run_date: str) -> DataFrame:
    """Rejects (source, reason, raw) dated with the run's date."""
    return conform(df.withColumn("dt", F.lit(run_date)), REJECTS)


def fingerprint(obj: object) -> str:
    """A short stable hash of a JSON-able description of a write's inputs and options."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def date_range_predicate(first: str, last: str, col: str = "dt") -> str:
    return f"{col} >= '{first}' AND {col} <= '{last}'"


def write_log_table(df: DataFrame, lakehouse: str, table: str, *, job: str, label: str,
                    replace_where: str, fp: str, extra_metadata: Mapping | None = None) -> bool:
    """Write ``df`` to ``table`` under ``lakehouse``, replacing ``replace_where`` (partitioned by dt).

    Idempotent: when the last commit on the table is the same job, label and input fingerprint the
    write is skipped; otherwise it replaces the predicate's rows (a forced Delta transaction, so an
    earlier run of the same label with other inputs does not make Delta skip it).

    Returns:
        True if a commit was made.
    """
    spark = df.sparkSession
    path = delta_io.table_path(lakehouse, table)
    if delta_io.same_write_committed(spark, path, job, label, fp):
        log.info("%s: %s %s already written with the same inputs; skipped", table, job, label)
        return False
    meta = {"fingerprint": fp, **(extra_metadata or {})}
    # One writer task per date: a few large files per dt instead of one per (task, dt).
    return delta_io.write_date(df.repartition("dt"), path, job=job, date=label, force=True,
                               extra_metadata=meta, replace_where=replace_where)


def write_table(df: DataFrame, lakehouse: str, table: str, *, job: str, label: str, fp: str) -> bool:
    """Replace a small unpartitioned table whole, skipped like :func:`write_log_table` when the last
    commit is the same job, label and fingerprint. Returns True if a commit was made."""
    path = delta_io.table_path(lakehouse, table)
    if delta_io.same_write_committed(df.sparkSession, path, job, label, fp):
        log.info("%s: %s %s already written with the same inputs; skipped", table, job, label)
        return False
    meta = json.dumps({"job": job, "date": label, "fingerprint": fp}, sort_keys=True)
    (df.write.format("delta").mode("overwrite").option("overwriteSchema", "true")
     .option("userMetadata", meta).save(path))
    return True
