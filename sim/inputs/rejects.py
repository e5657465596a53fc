"""The ``rejects`` table in one place: the reason codes every stage uses and the one writer.

DESIGN.md "Nothing is silently dropped": a row a stage cannot use becomes one row of ``rejects``
(``source`` = the job or input, ``reason`` = a code of :data:`REASONS`, ``raw`` = the row as read, ``dt``
= the run's date). Input validation (:mod:`sim.inputs.validation`) explains each code; the nightly jobs
use the same codes for what they refuse (``null_id``, ``bad_timestamp``, ``bad_label``, ``ts_outside_dt``).

A stage writes its rejects *before* its data: the data commit is what marks a date done, so a crash
between the two commits leaves the date undone, and the re-run writes both (the rejects slice of
(date, sources) is replaced, never appended).
"""
from __future__ import annotations

from typing import Sequence

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from sim.adapters.delta_io import is_delta_table, read_table, same_write_committed, table_path, write_date
from sim.inputs.schema import REJECTS

REJECTS_TABLE = "rejects"
# The codes of input validation (sim.inputs.validation explains each) ...
VALIDATION_REASONS = (
    "malformed_line", "null_id", "bad_id", "negative_id", "zero_id", "id_too_large", "bad_timestamp",
    "ts_in_future", "ts_outside_run_date", "unknown_behavior_type", "bad_label", "bad_p_click", "bad_rating",
    "unknown_item", "duplicate_event", "duplicate_impression_id", "missing_category", "duplicate_item",
)
# ... and the one only the nightly jobs use: a row whose ts is not inside its own dt partition.
REASONS = VALIDATION_REASONS + ("ts_outside_dt",)


def tag_rejects(rows: DataFrame, reason: Column, source: str, run_date: str) -> tuple[DataFrame, DataFrame]:
    """Split ``rows`` by ``reason`` (a column holding a code of :data:`REASONS`, null = usable) into
    (usable rows, rejects rows of ``source`` dated ``run_date`` with the row as JSON in ``raw``)."""
    tagged = rows.withColumn("_reason", reason)
    rejects = tagged.where(F.col("_reason").isNotNull()).select(
        F.lit(source).alias("source"), F.col("_reason").alias("reason"),
        F.to_json(F.struct(*[F.col(c) for c in rows.columns])).alias("raw"), F.lit(run_date).alias("dt"))
    return tagged.where(F.col("_reason").isNull()).drop("_reason"), rejects


def rejects_predicate(run_date: str, sources: Sequence[str]) -> str:
    quoted = ", ".join("'" + s.replace("'", "''") + "'" for s in sorted(set(sources)))
    return f"dt = '{run_date}' AND source IN ({quoted})"


def write_rejects(spark: SparkSession, lakehouse: str, rejects: DataFrame, run_date: str,
                  sources: Sequence[str], n: int | None = None, fingerprint: str | None = None) -> bool:
    """Replace the (``run_date``, ``sources``) slice of the rejects table with ``rejects`` (``n`` rows if
    the caller counted them), so a re-run neither duplicates nor keeps stale rejects. With the
    ``fingerprint`` of the run's inputs, a re-run whose last rejects commit had the same one is skipped.
    Returns True if a commit was made (none when there is nothing to write and nothing stale to clear)."""
    path = table_path(lakehouse, REJECTS_TABLE)
    where = rejects_predicate(run_date, sources)
    job = f"{'+'.join(sorted(set(sources)))}.rejects"
    if fingerprint and same_write_committed(spark, path, job, run_date, fingerprint):
        return False
    if n is None:
        n = rejects.count()
    if n == 0:
        # Nothing to record: skip unless the slice holds stale rows to clear or the table does not
        # exist yet (every lakehouse has a rejects table, empty or not, for the row accounting).
        if is_delta_table(spark, path) and read_table(spark, path).where(where).limit(1).count() == 0:
            return False
        rejects = spark.createDataFrame([], REJECTS)
    conformed = rejects.select(*[F.col(f.name).cast(f.dataType) for f in REJECTS.fields])
    return write_date(conformed.repartition("dt"), path, job=job, date=run_date, force=True,
                      replace_where=where, extra_metadata={"fingerprint": fingerprint} if fingerprint else None)
