"""Pure transforms of the UBT: DataFrames in, DataFrames out (aggregate, window, combine, rejects).
"""
from __future__ import annotations
from sim.inputs.rejects import tag_rejects
from sim.ubt.settings import JOB, KEY_COLUMNS, SECONDS_PER_DAY, UBT_COLUMNS, Windows
from sim.ubt.dates import epoch_day_col, segment_col, window_start_ts

import logging

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F


log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------ pure transforms
def behavior_struct() -> Column:
    return F.struct(F.col("ts").cast("long").alias("ts"), F.col("item_id").cast("long").alias("item_id"),
                    F.col("behavior_type").cast("string").alias("behavior_type"))


def _capped(arr: Column, cap: int) -> Column:
    return F.slice(arr, 1, cap) if cap else arr


def aggregate_ubt(behaviors: DataFrame, category_cap: int = 0, segment_days: int | None = None
                  ) -> DataFrame:
    """UBT rows from behaviors: one row per (user_id, category_id), newest first (KEY_COLUMNS), or with
    ``segment_days`` one row per (user_id, category_id, segment) as the table stores them (UBT_COLUMNS).

    The arrays are bounded by the window the caller filtered ``behaviors`` to; ``category_cap``
    (0 = off) keeps only the newest behaviors of each row, ``count`` stays uncapped.
    """
    keys = [F.col("user_id").cast("long").alias("user_id"),
            F.col("category_id").cast("long").alias("category_id")]
    if segment_days:
        keys.append(segment_col(F.col("dt"), segment_days).alias("segment"))
    agg = (behaviors.groupBy(*keys)
           .agg(F.sort_array(F.collect_list(behavior_struct()), asc=False).alias("behaviors"),
                F.count(F.lit(1)).alias("count"),
                F.max("ts").cast("long").alias("last_ts")))
    return (agg.withColumn("behaviors", _capped(F.col("behaviors"), category_cap))
            .withColumn("oldest_ts", F.element_at("behaviors", -1).getField("ts"))
            .select(*(UBT_COLUMNS if segment_days else KEY_COLUMNS)))


def in_window_rows(rows: DataFrame, start_ts: int | None) -> DataFrame:
    """UBT rows without the behaviors older than ``start_ts`` (the oldest segment may still hold some
    of dates that left the window); rows left empty are dropped. Only rows whose ``oldest_ts`` is
    older are looked at element by element. None (count mode) keeps everything.

    With a safety cap the count of a trimmed row is the stored count minus the removed elements, an
    upper bound (the capped-off tail is not known).
    """
    if start_ts is None:
        return rows
    start = F.lit(int(start_ts))
    stale = F.col("oldest_ts") < start
    kept = F.filter("behaviors", lambda b: b["ts"] >= start)
    replace = {
        "behaviors": F.when(stale, kept).otherwise(F.col("behaviors")),
        "count": F.when(stale, F.col("count") - (F.size("behaviors") - F.size(kept)))
        .otherwise(F.col("count")),
        "oldest_ts": F.when(~stale, F.col("oldest_ts"))
        .when(F.size(kept) > 0, F.element_at(kept, -1).getField("ts")),
    }
    out = rows.select(*[replace[c].alias(c) if c in replace else F.col(c) for c in rows.columns])
    return out.where(F.col("oldest_ts").isNotNull())  # null: every behavior of the row left the window


def combine_rows(rows: DataFrame, category_cap: int = 0) -> DataFrame:
    """One row per (user_id, category_id) from a key's segment rows: arrays concatenated newest segment
    first (segments are disjoint spans of days), counts summed, capped by ``category_cap`` (0 = off)."""
    merged = F.flatten(F.transform(F.sort_array(F.collect_list(F.struct("segment", "behaviors")), asc=False),
                                   lambda r: r["behaviors"]))
    out = (rows.groupBy("user_id", "category_id")
           .agg(merged.alias("behaviors"), F.sum("count").cast("long").alias("count"),
                F.max("last_ts").alias("last_ts")))
    return (out.withColumn("behaviors", _capped(F.col("behaviors"), category_cap))
            .withColumn("oldest_ts", F.element_at("behaviors", -1).getField("ts"))
            .select(*KEY_COLUMNS))


def ubt_view(rows: DataFrame, windows: Windows, date: str, category_cap: int = 0) -> DataFrame:
    """The index of UBT(``date``) as one row per (user_id, category_id) (KEY_COLUMNS): the key's segment
    rows of a version of the table (sim.adapters.delta_io.version_for_date finds the date's), restricted to the
    window, concatenated newest first, capped by ``category_cap`` (0 = off)."""
    return combine_rows(in_window_rows(rows, window_start_ts(windows, date)), category_cap)


def missing_key() -> Column:
    """True for a behaviors row without user, category, item or time: it cannot be indexed."""
    return (F.col("user_id").isNull() | F.col("category_id").isNull() | F.col("item_id").isNull()
            | F.col("ts").isNull())


def ts_outside_dt() -> Column:
    """True for a row whose ``ts`` (epoch seconds) is not inside its own ``dt`` date (UTC)."""
    return F.floor(F.col("ts") / F.lit(SECONDS_PER_DAY)) != epoch_day_col(F.col("dt"))


def reject_reason(behaviors: DataFrame) -> Column:
    """Why a behaviors row cannot be indexed (null if it can), as a code of sim.inputs.rejects.REASONS:
    a missing id (``null_id``) or time (``bad_timestamp``), or a time outside its ``dt`` date
    (``ts_outside_dt``; the nightly update relies on each date's behaviors being that date's)."""
    return (F.when(F.col("user_id").isNull() | F.col("category_id").isNull() | F.col("item_id").isNull(),
                   F.lit("null_id"))
            .when(F.col("ts").isNull(), F.lit("bad_timestamp"))
            .when(ts_outside_dt(), F.lit("ts_outside_dt")))


def reject_bad_rows(behaviors: DataFrame, run_date: str) -> tuple[DataFrame, DataFrame]:
    """Split behaviors into (accepted, rejects) by :func:`reject_reason`, rejects with source = this job."""
    return tag_rejects(behaviors, reject_reason(behaviors), JOB, run_date)
