"""The User Behavior Tree (UBT): the paper's offline two-level index user_id -> category_id -> behaviors
(SIM section 5.2, "Online Serving"), kept as a Delta table that a nightly job updates.

The index row of a (user_id, category_id) holds the key's behaviors of the long window, newest first,
as an array of ``struct<ts, item_id, behavior_type>``, plus ``count`` (uncapped number of behaviors of
the key in the window), ``last_ts`` and ``oldest_ts``; the table stores it in segments (below). The
index holds the lifelong data: the paper's truncation to K = 200 applies to what hard search returns
(sim.samples), not to the index; an optional safety cap per key (``caps.ubt_category_cap``) exists and
is off by default.

Segments. The table is partitioned by ``segment``, the first date of the span of days a row's
behaviors fall in: a key's behaviors are stored as one row per segment, and the index row of a key is
the concatenation of its segment rows, newest segment first (:func:`ubt_view`). Segments are blocks of
``windows.segment_days`` days aligned on 1970-01-01, except the current block: its days are one
segment each until the block is complete. This is what keeps the nightly cost following the day's
data: a night appends the day's rows (one per key active that day) without reading the index, and
on the last day of a block it rolls that block's rows up into one row per key (at most
``segment_days`` days of data); no night reads or rewrites the 180-day arrays.

Retention. In time mode UBT(D) serves the impressions of day D+1, whose long window
(t - long_days, t) starts no earlier than midnight of D+1-long_days, so UBT(D) holds the behaviors of
the dates D+1-long_days .. D (``long_days`` whole days): blocks that end before that first date are
dropped (whole partitions, a metadata-only delete); the oldest block may still hold behaviors of
older dates, which every reader filters out by time (:func:`in_window_rows`). In count mode (public
datasets: the last N behaviors regardless of time) nothing expires; each segment row keeps its newest
max(long, short) count behaviors, which is all that the count-based sequences of sim.samples can
ever read.

Commits. Each date is one append commit with userMetadata {"job": "build_ubt", "date": D, ...}, then,
on the days that complete a block or drop one, a rollup and a delete commit tagged with the same date;
the samples job finds UBT(D-1) by time travel to the date's last commit
(sim.delta_io.version_for_date). A full build ("backfill") of date FROM aggregates all behaviors of
FROM's window in one pass.
"""
from __future__ import annotations

import datetime as _dt
import logging
from dataclasses import dataclass, field
from typing import Mapping

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from sim.config import ConfigError
from sim.delta_io import (Commit, commit_metadata, is_delta_table, job_commits, latest_version,
                          read_table, require_table, table_path, write_date)
from sim.schema import REJECTS

log = logging.getLogger(__name__)

JOB = "build_ubt"
SECONDS_PER_DAY = 86400

BEHAVIOR_STRUCT = T.StructType([
    T.StructField("ts", T.LongType(), False),
    T.StructField("item_id", T.LongType(), False),
    T.StructField("behavior_type", T.StringType(), True),
])
UBT = T.StructType([
    T.StructField("user_id", T.LongType(), False),
    T.StructField("category_id", T.LongType(), False),
    # First date (yyyy-MM-dd) of the block of segment_days days the row's behaviors fall in; partition.
    T.StructField("segment", T.StringType(), False),
    # Newest first; ties by item_id then behavior_type descending (a total order: re-runs are identical).
    T.StructField("behaviors", T.ArrayType(BEHAVIOR_STRUCT, False), False),
    T.StructField("count", T.LongType(), False),  # uncapped number of the row's behaviors
    T.StructField("last_ts", T.LongType(), False),  # newest behavior of the row
    T.StructField("oldest_ts", T.LongType(), False),  # oldest behavior held in `behaviors`
])
UBT_COLUMNS = tuple(f.name for f in UBT.fields)
# One row per key: what the index holds for a (user, category), segments concatenated (ubt_view).
KEY_COLUMNS = tuple(c for c in UBT_COLUMNS if c != "segment")



class UbtStateError(RuntimeError):
    """The UBT is not at the state a run needs (e.g. D-1 was never built); the message says what to run."""


# --------------------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class Windows:
    """The ``windows:`` block of conf/pipeline.yaml (DESIGN.md "Data model": long/short windows)."""
    mode: str = "time"  # time | count
    long_days: int = 180
    short_days: int = 14
    long_count: int = 400
    short_count: int = 100
    segment_days: int = 7  # UBT rows hold a key's behaviors per block of this many days

    def __post_init__(self) -> None:
        if self.mode not in ("time", "count"):
            raise ConfigError(f"windows.mode must be 'time' or 'count', not {self.mode!r}")
        for name in ("long_days", "short_days", "long_count", "short_count", "segment_days"):
            if int(getattr(self, name)) <= 0:
                raise ConfigError(f"windows.{name} must be a positive integer")
        if self.short_days > self.long_days:
            raise ConfigError("windows.short_days must not exceed windows.long_days")

    @classmethod
    def from_conf(cls, cfg: Mapping) -> "Windows":
        block = dict(cfg.get("windows") or {})
        known = {k: block[k] for k in ("mode", "long_days", "short_days", "long_count", "short_count",
                                       "segment_days") if k in block}
        return cls(**{k: (v if k == "mode" else int(v)) for k, v in known.items()})


@dataclass(frozen=True)
class Caps:
    """The ``caps:`` block: fixed lengths of the samples' sequences and the optional UBT safety cap."""
    short_cap: int = 50
    hard_k: int = 200
    long_cap: int = 1000
    ubt_category_cap: int = 0  # 0 = off: the index keeps the whole long window

    def __post_init__(self) -> None:
        for name in ("short_cap", "hard_k", "long_cap"):
            if int(getattr(self, name)) <= 0:
                raise ConfigError(f"caps.{name} must be a positive integer")
        if self.ubt_category_cap < 0:
            raise ConfigError("caps.ubt_category_cap must be >= 0 (0 = off)")

    @classmethod
    def from_conf(cls, cfg: Mapping) -> "Caps":
        block = dict(cfg.get("caps") or {})
        return cls(**{k: int(block[k]) for k in ("short_cap", "hard_k", "long_cap", "ubt_category_cap")
                      if k in block})


def check_caps_fit(windows: Windows, caps: Caps) -> None:
    """Count mode stores exactly ``short_count`` and ``long_count`` behaviors: caps smaller than the
    counts would cut a sequence silently, so they are refused (time mode caps its windows by design)."""
    if windows.mode != "count":
        return
    problems = [f"caps.{cap}={getattr(caps, cap)} < windows.{count}={getattr(windows, count)}"
                for cap, count in (("short_cap", "short_count"), ("long_cap", "long_count"))
                if getattr(caps, cap) < getattr(windows, count)]
    if problems:
        raise ConfigError("count mode keeps the last short_count behaviors as the short sequence and the "
                          "long_count before them as the long one; " + ", ".join(problems)
                          + ": raise the caps or lower the counts")


def long_seq_len(windows: Windows, caps: Caps) -> int:
    """How many behaviors the long sequence holds at most (its padded length is ``caps.long_cap``)."""
    return caps.long_cap if windows.mode == "time" else windows.long_count


def short_seq_len(windows: Windows, caps: Caps) -> int:
    return caps.short_cap if windows.mode == "time" else windows.short_count


def recent_seq_len(windows: Windows, caps: Caps) -> int:
    """Newest behaviors of a user that the short and long sequences together can need: the long
    sequence in time mode (the short one is its prefix); short + long in count mode (disjoint)."""
    long_n, short_n = long_seq_len(windows, caps), short_seq_len(windows, caps)
    return long_n + short_n if windows.mode == "count" else max(long_n, short_n)


def ubt_category_cap(windows: Windows, caps: Caps) -> int:
    """Behaviors kept per (user, category) array; 0 = all of the long window.

    In count mode a key never needs more than the count-based sequences together: the newest N + M
    behaviors of a user hold at most N + M of any one category.
    """
    if windows.mode == "time":
        return caps.ubt_category_cap
    need = recent_seq_len(windows, caps)
    return min(need, caps.ubt_category_cap) if caps.ubt_category_cap else need


def ubt_metadata(windows: Windows, caps: Caps) -> dict:
    """What a UBT commit records beside job and date, so sim.samples can check it fits its windows."""
    return {"mode": windows.mode, "long_days": windows.long_days if windows.mode == "time" else None,
            "category_cap": ubt_category_cap(windows, caps), "segment_days": windows.segment_days}


# ------------------------------------------------------------------------------------------ dates
def parse_date(date: str) -> _dt.date:
    try:
        return _dt.date.fromisoformat(date)
    except ValueError as e:
        raise ConfigError(f"date {date!r} must look like yyyy-MM-dd") from e


def shift_date(date: str, days: int) -> str:
    return (parse_date(date) + _dt.timedelta(days=days)).isoformat()


EPOCH = _dt.date(1970, 1, 1)


def epoch_day(date: str) -> int:
    """Days from 1970-01-01 to ``date``."""
    return (parse_date(date) - EPOCH).days


def epoch_day_col(dt: Column) -> Column:
    """:func:`epoch_day` of a ``yyyy-MM-dd`` column."""
    return F.datediff(F.to_date(dt), F.lit(EPOCH.isoformat()).cast("date"))


def day_start(date: str) -> int:
    """Epoch seconds of midnight UTC starting ``date``."""
    return epoch_day(date) * SECONDS_PER_DAY


def date_range(first: str, last: str) -> list[str]:
    a, b = parse_date(first), parse_date(last)
    if b < a:
        raise ConfigError(f"--backfill {first} is after --date {last}")
    return [(a + _dt.timedelta(days=i)).isoformat() for i in range((b - a).days + 1)]


def retention_first_date(windows: Windows, date: str) -> str | None:
    """The oldest behaviors date UBT(date) keeps (None in count mode: nothing expires)."""
    return shift_date(date, 1 - windows.long_days) if windows.mode == "time" else None


def segment_of(date: str, segment_days: int) -> str:
    """The first date of the block of ``segment_days`` days (aligned on 1970-01-01) holding ``date``."""
    days = epoch_day(date)
    return (EPOCH + _dt.timedelta(days=days - days % segment_days)).isoformat()


def segment_col(dt: Column, segment_days: int) -> Column:
    """:func:`segment_of` of a ``yyyy-MM-dd`` column."""
    days = epoch_day_col(dt)
    return F.date_format(F.date_from_unix_date((days - days % F.lit(segment_days)).cast("int")),
                         "yyyy-MM-dd")


def window_start_ts(windows: Windows, date: str) -> int | None:
    """Epoch seconds from which UBT(date) holds behaviors (None in count mode)."""
    first = retention_first_date(windows, date)
    return day_start(first) if first else None


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
    rows of a version of the table (sim.delta_io.version_for_date finds the date's), restricted to the
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
    """Why a behaviors row cannot be indexed (null if it can): a missing key or time, or a time outside
    its ``dt`` date (the nightly update relies on each date's behaviors being that date's)."""
    return (F.when(missing_key(), F.lit("behaviors row with a null user_id, category_id, item_id or ts"))
            .when(ts_outside_dt(), F.lit("behaviors row whose ts is outside its dt date")))


def reject_bad_rows(behaviors: DataFrame, run_date: str) -> tuple[DataFrame, DataFrame]:
    """Split behaviors into (accepted, rejects) by :func:`reject_reason`; rejects follow
    sim.schema.REJECTS with source = this job."""
    tagged = behaviors.withColumn("_reason", reject_reason(behaviors))
    rejects = tagged.where(F.col("_reason").isNotNull()).select(
        F.lit(JOB).alias("source"), F.col("_reason").alias("reason"),
        F.to_json(F.struct(*[F.col(c) for c in behaviors.columns])).alias("raw"),
        F.lit(run_date).alias("dt"))
    return tagged.where(F.col("_reason").isNull()).drop("_reason"), rejects


# ---------------------------------------------------------------------------------------- the job
@dataclass
class DayResult:
    date: str
    action: str  # skipped | full | nightly
    version: int | None
    touched_keys: int = 0
    rejected: int = 0
    metrics: dict = field(default_factory=dict)


def _behaviors_table(spark: SparkSession, lakehouse: str) -> DataFrame:
    path = table_path(lakehouse, "behaviors")
    require_table(spark, path, "run jobs/generate_logs.py or jobs/import_dataset.py first")
    return read_table(spark, path)


def write_rejects(spark: SparkSession, lakehouse: str, rejects: DataFrame, run_date: str, source: str,
                  n: int) -> None:
    """Record ``n`` rejected rows for ``run_date`` under ``source``, replacing that (date, source) slice
    of the rejects table, so a re-run neither duplicates nor keeps stale rejects."""
    path = table_path(lakehouse, "rejects")
    if n == 0:
        if not is_delta_table(spark, path) or read_table(spark, path).where(
                (F.col("dt") == run_date) & (F.col("source") == source)).limit(1).count() == 0:
            return
        rejects = spark.createDataFrame([], REJECTS)
    write_date(rejects.select(*[F.col(f.name).cast(f.dataType) for f in REJECTS.fields]), path,
               job=f"{source}.rejects", date=run_date, force=True,
               replace_where=f"dt = '{run_date}' AND source = '{source}'")


def _require_state_at(spark: SparkSession, path: str, date: str, commits: list[Commit]) -> int:
    """Fail unless the table's current content is UBT(date): the newest build_ubt commit is for
    ``date`` and nothing changed the data after it (OPTIMIZE or VACUUM only rewrite files)."""
    if not commits:
        raise UbtStateError(f"the UBT at {path} has no build_ubt commit; build it with "
                            f"`jobs/build_ubt.py --date {shift_date(date, 1)} --backfill FROM`")
    last = commits[-1]
    if last.date != date:
        have = sorted({c.date for c in commits})
        raise UbtStateError(
            f"UBT({date}) is missing or is not the latest state of {path} (its newest build_ubt date is "
            f"{last.date}; dates built: {have[0]}..{have[-1]}). Run jobs/build_ubt.py for {date} first, "
            f"or use --backfill FROM to build a range in order")
    latest = latest_version(spark, path)
    if latest != last.version:
        from delta.tables import DeltaTable
        later = (DeltaTable.forPath(spark, path).history().where(F.col("version") > last.version)
                 .select("version", "operation").collect())
        changed = [r for r in later
                   if r.operation not in ("OPTIMIZE", "VACUUM START", "VACUUM END", "SET TBLPROPERTIES")]
        if changed:
            raise UbtStateError(f"the UBT at {path} was changed after build_ubt {date} (version "
                                f"{changed[0].version}: {changed[0].operation}); rebuild it with "
                                f"--backfill FROM --force")
    return last.version


def full_build(spark: SparkSession, lakehouse: str, date: str, windows: Windows, caps: Caps) -> DayResult:
    """UBT(date) from all behaviors of its window in one pass; replaces the whole table (one commit)."""
    path = table_path(lakehouse, "ubt")
    first = retention_first_date(windows, date)
    b = _behaviors_table(spark, lakehouse).where(F.col("dt") <= date)
    if first:
        b = b.where(F.col("dt") >= first)
    accepted, rejects = reject_bad_rows(b, date)
    n_rejects = rejects.count()  # a scan of four columns; clean tables are the norm
    ubt = (aggregate_ubt(accepted, ubt_category_cap(windows, caps), windows.segment_days)
           .repartition("segment").sortWithinPartitions("segment", "user_id", "category_id"))
    meta = {"job": JOB, "date": date, "op": "full", **ubt_metadata(windows, caps)}
    writer = (ubt.write.format("delta").mode("overwrite").option("overwriteSchema", "true")
              .partitionBy("segment"))
    with commit_metadata(spark, meta):
        writer.save(path)
    write_rejects(spark, lakehouse, rejects, date, JOB, n_rejects)
    version = latest_version(spark, path)
    log.info("build_ubt %s: full build from %s..%s committed version %s", date, first or "start",
             date, version)
    return DayResult(date, "full", version, rejected=n_rejects)


def nightly_update(spark: SparkSession, lakehouse: str, date: str, windows: Windows, caps: Caps,
                   commits: list[Commit] | None = None) -> DayResult:
    """UBT(date) = UBT(date-1) + behaviors(date) - blocks leaving the window: the day's rows (one per key
    active that day, segment = the date) appended without reading the index, one commit tagged with
    the date; then the block rollup and the delete of blocks that left, on the days they happen."""
    from delta.tables import DeltaTable
    path = table_path(lakehouse, "ubt")
    require_table(spark, path, f"build the index first: jobs/build_ubt.py --date {date} --backfill FROM")
    if commits is None:
        commits = job_commits(spark, path, JOB)
    _require_state_at(spark, path, shift_date(date, -1), commits)
    new, rejects = reject_bad_rows(_behaviors_table(spark, lakehouse).where(F.col("dt") == date), date)
    n_rejects = rejects.count()
    cap = ubt_category_cap(windows, caps)
    meta = {"job": JOB, "date": date, "op": "nightly", **ubt_metadata(windows, caps)}
    with commit_metadata(spark, meta):
        (aggregate_ubt(new, cap, segment_days=1).write.format("delta").mode("append")
         .partitionBy("segment").save(path))
    write_rejects(spark, lakehouse, rejects, date, JOB, n_rejects)
    hist = DeltaTable.forPath(spark, path).history(1).select("version", "operationMetrics").first()
    metrics = dict(hist.operationMetrics or {})
    result = DayResult(date, "nightly", int(hist.version), touched_keys=int(metrics.get("numOutputRows", 0)),
                       rejected=n_rejects, metrics=metrics)
    log.info("build_ubt %s: appended the day's rows of %s keys -> version %s", date, result.touched_keys,
             hist.version)
    rolled = _rollup_block(spark, path, windows, cap, date, meta)
    dropped = _expire_blocks(spark, path, windows, date, meta)
    result.metrics.update(rollup_block=rolled is not None, expire_blocks=dropped is not None)
    for version in (rolled, dropped):  # the date's last commit is its version
        if version is not None:
            result.version = version
    return result


def _rollup_block(spark: SparkSession, path: str, windows: Windows, cap: int, date: str, meta: dict
                  ) -> int | None:
    """On the last day of a block: its rows (the days appended one by one, and the part a full build
    wrote) become one row per key with segment = the block's first date, in a commit tagged with the
    date (same content, fewer rows); the version, or None on other days. Reads and writes only the
    block's partitions: at most ``segment_days`` days of data."""
    block = segment_of(date, windows.segment_days)
    if windows.segment_days == 1 or segment_of(shift_date(date, 1), windows.segment_days) == block:
        return None
    where = f"segment >= '{block}' AND segment <= '{date}'"
    rows = read_table(spark, path).where(where)
    rolled = combine_rows(rows, cap).withColumn("segment", F.lit(block))
    with commit_metadata(spark, {**meta, "op": "rollup"}):
        (rolled.select(*UBT_COLUMNS).sortWithinPartitions("user_id", "category_id")
         .write.format("delta").mode("overwrite").option("replaceWhere", where).save(path))
    version = latest_version(spark, path)
    log.info("build_ubt %s: rolled the block %s..%s up into one row per key -> version %s", date, block,
             date, version)
    return version


def _expire_blocks(spark: SparkSession, path: str, windows: Windows, date: str, meta: dict) -> int | None:
    """Drop the blocks whose every date left UBT(date)'s window (whole partitions: no data file is read
    or written), in a commit tagged with the date; the version, or None when none left today.

    A block leaves on the day after its last date leaves, so this runs once per segment_days days; the
    condition takes every older segment too, so a run interrupted before it is made up next time.
    """
    first = retention_first_date(windows, date)
    if first is None:
        return None
    older = segment_of(shift_date(first, -1), windows.segment_days)
    if older == segment_of(first, windows.segment_days):  # the day before the window is in its block
        return None
    from delta.tables import DeltaTable
    with commit_metadata(spark, {**meta, "op": "expire"}):
        DeltaTable.forPath(spark, path).delete(f"segment <= '{older}'")
    version = latest_version(spark, path)
    log.info("build_ubt %s: dropped the blocks up to %s (out of the window from %s) -> version %s",
             date, older, first, version)
    return version


def build_ubt(spark: SparkSession, lakehouse: str, date: str, windows: Windows, caps: Caps,
              backfill_from: str | None = None, force: bool = False) -> list[DayResult]:
    """Bring the UBT to ``date``: the nightly job.

    Without ``backfill_from``: UBT(date) from UBT(date-1) by :func:`nightly_update`; fails if UBT(date-1)
    is missing.
    With it: on an empty index, a full build of ``backfill_from`` then one nightly update per following
    day up to ``date``, in order, one commit each; dates already committed are skipped, so an
    interrupted backfill resumes. A date already committed is a no-op ("re-running D changes nothing")
    unless ``force``: then the table is restored to UBT(date-1) and the date applied again (with
    ``backfill_from`` and force, the whole range is rebuilt from a full build).
    """
    path = table_path(lakehouse, "ubt")
    dates = date_range(backfill_from, date) if backfill_from else [parse_date(date).isoformat()]
    results = []
    for i, d in enumerate(dates):
        commits = job_commits(spark, path, JOB)
        done = max((c.version for c in commits if c.date == d), default=None)
        if done is not None and not force:
            log.info("build_ubt %s: already committed (version %s); nothing to do", d, done)
            results.append(DayResult(d, "skipped", done))
            continue
        if backfill_from and i == 0 and (not commits or force):
            results.append(full_build(spark, lakehouse, d, windows, caps))
            continue
        if done is not None:  # forced re-run of a committed date: back to UBT(d-1) first
            if _restore_to(spark, path, shift_date(d, -1), commits):
                commits = job_commits(spark, path, JOB)
        results.append(nightly_update(spark, lakehouse, d, windows, caps, commits))
    return results


def _restore_to(spark: SparkSession, path: str, date: str, commits: list[Commit]) -> bool:
    version = max((c.version for c in commits if c.date == date), default=None)
    if version is None:
        raise UbtStateError(f"cannot re-run {shift_date(date, 1)}: UBT({date}) was never built; "
                            f"use --backfill FROM --force")
    if latest_version(spark, path) == version:
        return False
    from delta.tables import DeltaTable
    with commit_metadata(spark, {"job": JOB, "date": date, "op": "restore"}):
        DeltaTable.forPath(spark, path).restoreToVersion(version)
    log.info("build_ubt: restored %s to UBT(%s) (version %s) before the forced re-run", path, date, version)
    return True
