"""The nightly UBT job: full build or nightly update of one date, rollup and expiry of segments,
restore after a failed night.

Each commit records the settings the rows depend on (:func:`sim.ubt.settings.ubt_settings`) and what
it read: the behaviors (version and files of the dates read) and, for a night, the UBT(D-1) it built
on (sim.adapters.lineage). A committed date is skipped only when a run today would record the same; a
changed setting or input is refused, naming it, unless ``force``. A date whose behaviors are missing
is refused and nothing is committed, unless ``allow_empty`` says the day genuinely had none: a day
that lands late is then built by the next run instead of being skipped as done.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from sim.adapters.delta_io import (Commit, commit_metadata, job_commits, last_commit, latest_version,
                                   operations_after, read_table, require_table, retention_on_create,
                                   set_retention, table_path)
from sim.adapters.lineage import empty_input, job_date_read, rerun_refusal, run_record, table_read
from sim.faults import crash_point
from sim.inputs.rejects import write_rejects
from sim.ubt.settings import (Caps, JOB, UBT_COLUMNS, UbtStateError, Windows, ubt_category_cap, ubt_metadata,
                              ubt_settings)
from sim.ubt.transforms import aggregate_ubt, combine_rows, reject_bad_rows
from sim.ubt.dates import date_range, parse_date, retention_first_date, segment_of, shift_date

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------- the job
@dataclass
class DayResult:
    date: str
    action: str  # skipped | full | nightly
    version: int | None
    touched_keys: int = 0
    rejected: int = 0
    metrics: dict = field(default_factory=dict)


def _behaviors(spark: SparkSession, lakehouse: str, where: str, date: str, allow_empty: bool
               ) -> tuple[DataFrame, dict]:
    """(the behaviors of ``where``, pinned to the version read, and what was read for the commit);
    refuses a ``date`` without behaviors unless ``allow_empty``."""
    path = table_path(lakehouse, "behaviors")
    require_table(spark, path, "run jobs/generate_logs.py or jobs/import_dataset.py first")
    read = table_read(spark, path, where)
    day = read if where == f"dt = '{date}'" else table_read(spark, path, f"dt = '{date}'", read.version)
    if day.empty and not allow_empty:
        raise UbtStateError(empty_input("behaviors", date, day.where, path, day.version, f"UBT({date})"))
    return read_table(spark, path, read.version).where(where), read.record()


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
        changed = [(v, op) for v, op in operations_after(spark, path, last.version)
                   if op not in ("OPTIMIZE", "VACUUM START", "VACUUM END", "SET TBLPROPERTIES")]
        if changed:
            raise UbtStateError(f"the UBT at {path} was changed after build_ubt {date} (version "
                                f"{changed[0][0]}: {changed[0][1]}); rebuild it with "
                                f"--backfill FROM --force")
    return last.version


def full_build(spark: SparkSession, lakehouse: str, date: str, windows: Windows, caps: Caps,
               allow_empty: bool = False) -> DayResult:
    """UBT(date) from all behaviors of its window in one pass; replaces the whole table (one commit)."""
    path = table_path(lakehouse, "ubt")
    first = retention_first_date(windows, date)
    where = f"dt >= '{first}' AND dt <= '{date}'" if first else f"dt <= '{date}'"
    b, read = _behaviors(spark, lakehouse, where, date, allow_empty)
    accepted, rejects = reject_bad_rows(b, date)
    n_rejects = rejects.count()  # a scan of four columns; clean tables are the norm
    ubt = (aggregate_ubt(accepted, ubt_category_cap(windows, caps), windows.segment_days)
           .repartition("segment").sortWithinPartitions("segment", "user_id", "category_id"))
    meta = {"job": JOB, "date": date, "op": "full", **ubt_metadata(windows, caps),
            **run_record(ubt_settings(windows, caps), {"behaviors": read})}
    writer = (ubt.write.format("delta").mode("overwrite").option("overwriteSchema", "true")
              .partitionBy("segment"))
    write_rejects(spark, lakehouse, rejects, date, [JOB], n_rejects)  # first: the data marks the date done
    crash_point("build_ubt.rejects_written")
    with commit_metadata(spark, meta):
        writer.save(path)
    version = latest_version(spark, path)
    log.info("build_ubt %s: full build from %s..%s committed version %s", date, first or "start",
             date, version)
    return DayResult(date, "full", version, rejected=n_rejects)


def nightly_update(spark: SparkSession, lakehouse: str, date: str, windows: Windows, caps: Caps,
                   commits: list[Commit] | None = None, allow_empty: bool = False) -> DayResult:
    """UBT(date) = UBT(date-1) + behaviors(date) - blocks leaving the window: the day's rows (one per key
    active that day, segment = the date) appended without reading the index, one commit tagged with
    the date; then the block rollup and the delete of blocks that left, on the days they happen."""
    path = table_path(lakehouse, "ubt")
    require_table(spark, path, f"build the index first: jobs/build_ubt.py --date {date} --backfill FROM")
    if commits is None:
        commits = job_commits(spark, path, JOB)
    _require_state_at(spark, path, shift_date(date, -1), commits)
    prev = job_date_read(spark, path, JOB, shift_date(date, -1), commits)  # the UBT(D-1) it builds on
    day, read = _behaviors(spark, lakehouse, f"dt = '{date}'", date, allow_empty)
    new, rejects = reject_bad_rows(day, date)
    n_rejects = rejects.count()
    cap = ubt_category_cap(windows, caps)
    meta = {"job": JOB, "date": date, "op": "nightly", **ubt_metadata(windows, caps),
            **run_record(ubt_settings(windows, caps), {"behaviors": read, "ubt": prev})}
    write_rejects(spark, lakehouse, rejects, date, [JOB], n_rejects)  # first: the data marks the date done
    crash_point("build_ubt.rejects_written")
    with commit_metadata(spark, meta):
        (aggregate_ubt(new, cap, segment_days=1).write.format("delta").mode("append")
         .partitionBy("segment").save(path))
    head = last_commit(spark, path)
    result = DayResult(date, "nightly", head.version, touched_keys=int(head.metrics.get("numOutputRows", 0)),
                       rejected=n_rejects, metrics=dict(head.metrics))
    log.info("build_ubt %s: appended the day's rows of %s keys -> version %s", date, result.touched_keys,
             head.version)
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
              backfill_from: str | None = None, force: bool = False, backfill_days: int = 30,
              allow_empty: bool = False) -> list[DayResult]:
    """Bring the UBT to ``date``: the nightly job.

    Without ``backfill_from``: UBT(date) from UBT(date-1) by :func:`nightly_update`; fails if UBT(date-1)
    is missing.
    With it: on an empty index, a full build of ``backfill_from`` then one nightly update per following
    day up to ``date``, in order, one commit each; dates already committed are skipped, so an
    interrupted backfill resumes. A date already committed is a no-op ("re-running D changes nothing")
    when its commit records the settings and inputs this run would (else :class:`UbtStateError` names
    each difference), unless ``force``: then the table is restored to UBT(date-1) and the date applied
    again (with ``backfill_from`` and force, the whole range is rebuilt from a full build). A date
    without behaviors is refused, nothing committed, unless ``allow_empty``.

    The table declares a retention of ``backfill_days`` (``retention.backfill_days``) for its log and its
    removed files: the samples job time-travels to UBT(D-1), so every date of that horizon stays
    rebuildable after VACUUM and log clean-up.
    """
    path = table_path(lakehouse, "ubt")
    dates = date_range(backfill_from, date) if backfill_from else [parse_date(date).isoformat()]
    with retention_on_create(spark, backfill_days):
        results = _build_dates(spark, lakehouse, path, dates, windows, caps, backfill_from, force, allow_empty)
    if any(r.action != "skipped" for r in results):
        set_retention(spark, path, backfill_days)  # a table created before retention was declared
    return results


def _build_dates(spark: SparkSession, lakehouse: str, path: str, dates: list[str], windows: Windows,
                 caps: Caps, backfill_from: str | None, force: bool, allow_empty: bool) -> list[DayResult]:
    results = []
    for i, d in enumerate(dates):
        commits = job_commits(spark, path, JOB)
        done = max((c.version for c in commits if c.date == d), default=None)
        if done is not None and not force:
            _check_rerun(spark, lakehouse, d, next(c for c in commits if c.version == done), windows, caps)
            log.info("build_ubt %s: already committed (version %s) with these settings and inputs; "
                     "nothing to do", d, done)
            results.append(DayResult(d, "skipped", done))
            continue
        if backfill_from and i == 0 and (not commits or force):
            results.append(full_build(spark, lakehouse, d, windows, caps, allow_empty))
            continue
        if done is not None:  # forced re-run of a committed date: back to UBT(d-1) first
            if _restore_to(spark, path, shift_date(d, -1), commits):
                commits = job_commits(spark, path, JOB)
        results.append(nightly_update(spark, lakehouse, d, windows, caps, commits, allow_empty))
    return results


def _check_rerun(spark: SparkSession, lakehouse: str, date: str, done: Commit, windows: Windows,
                 caps: Caps) -> None:
    """Refuse to skip a committed date whose commit records other settings or inputs than this run."""
    paths = {t: table_path(lakehouse, t) for t in ("behaviors", "ubt")}
    refusal = rerun_refusal(spark, done, ubt_settings(windows, caps), paths, f"UBT({date})",
                            f"Rebuild it with --force (from UBT({shift_date(date, -1)}); a changed window, cap "
                            f"or block size means the whole index: --backfill FROM --force)")
    if refusal:
        raise UbtStateError(refusal)


def _restore_to(spark: SparkSession, path: str, date: str, commits: list[Commit]) -> bool:
    version = max((c.version for c in commits if c.date == date), default=None)
    if version is None:
        raise UbtStateError(f"cannot re-run {shift_date(date, 1)}: UBT({date}) was never built; "
                            f"use --backfill FROM --force")
    if latest_version(spark, path) == version:
        return False
    from delta.tables import DeltaTable
    restored = next((c.metadata for c in commits if c.version == version), {})
    # The restored commit's record (settings, inputs) holds for the table again; its version says which.
    with commit_metadata(spark, {**restored, "job": JOB, "date": date, "op": "restore",
                                 "restored_version": restored.get("restored_version", version)}):
        DeltaTable.forPath(spark, path).restoreToVersion(version)
    log.info("build_ubt: restored %s to UBT(%s) (version %s) before the forced re-run", path, date, version)
    return True
