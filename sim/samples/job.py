"""The nightly samples job: samples(D) from impressions(D), UBT(D-1) and behaviors(D, ts < t).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from sim.config import ConfigError
from sim.adapters.delta_io import (commit_age_days, job_commits, read_table, require_table,
                                   retention_on_create, set_retention, table_path, version_for_date,
                                   write_date)
from sim.ubt.settings import (JOB as UBT_JOB, UBT, ubt_category_cap)
from sim.ubt.transforms import missing_key
from sim.ubt.dates import parse_date, shift_date
from sim.faults import crash_point
from sim.inputs.rejects import write_rejects
from sim.samples.transforms import ID_MARK, LEAK_MARK, build_sequences, first_leak, split_impressions, to_samples
from sim.samples.contract import JOB, LeakError, SampleSpec, SamplesInputError

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------- the job
@dataclass
class SamplesResult:
    date: str
    action: str  # skipped | written
    version: int | None
    ubt_version: int | None = None
    impressions: int = 0
    rejected: int = 0


def _check_ubt_fits(spark: SparkSession, ubt_path: str, prev: str, spec: SampleSpec) -> int:
    version = version_for_date(spark, ubt_path, UBT_JOB, prev)
    commits = job_commits(spark, ubt_path, UBT_JOB)
    later = [c for c in commits if c.date > prev]
    if version is None and later:
        raise SamplesInputError(past_horizon(prev, ubt_path, spec.backfill_days,
                                             "its commit is no longer in the log"))
    if version is None:
        raise SamplesInputError(f"UBT({prev}) was never built at {ubt_path}: run "
                                f"`jobs/build_ubt.py --date {prev}` (or with --backfill FROM) first")
    age = commit_age_days(spark, ubt_path, version)
    if later and age > spec.backfill_days:
        raise SamplesInputError(past_horizon(prev, ubt_path, spec.backfill_days,
                                             f"version {version} was committed {age:.1f} days ago"))
    meta = next(c.metadata for c in reversed(commits) if c.version <= version
                and c.date == prev)
    w = spec.windows
    if meta.get("mode", w.mode) != w.mode:
        raise SamplesInputError(f"UBT({prev}) was built in {meta.get('mode')} mode, samples need "
                                f"{w.mode}; rebuild the UBT with the same windows")
    if w.mode == "time" and meta.get("long_days") not in (None, w.long_days):
        raise SamplesInputError(f"UBT({prev}) keeps {meta['long_days']} days, samples use "
                                f"windows.long_days={w.long_days}; rebuild the UBT with the same windows")
    cap = meta.get("category_cap") or 0
    need = ubt_category_cap(w, spec.caps)
    if cap and (need == 0 or cap < need):
        log.warning("UBT(%s) keeps at most %s behaviors per category; samples would use up to %s",
                    prev, cap, need or "all")
    return version


def past_horizon(prev: str, ubt_path: str, days: int, why: str) -> str:
    return (f"UBT({prev}) is past the backfill horizon of {days} days (retention.backfill_days) of "
            f"{ubt_path}: {why}, and VACUUM or log clean-up may have removed it. Rebuild the index "
            f"from an earlier date with `jobs/build_ubt.py --date {prev} --backfill FROM --force`, or "
            f"raise retention.backfill_days before the dates you need age out")


def _skipped(spark: SparkSession, out: str, label: str, force: bool) -> SamplesResult | None:
    """The result of a run whose ``label`` is already committed (None when it must run)."""
    done = version_for_date(spark, out, JOB, label)
    if done is None or force:
        return None
    log.info("build_samples %s: already committed (version %s); nothing to do", label, done)
    return SamplesResult(label, "skipped", done)


def _log_tables(spark: SparkSession, lakehouse: str) -> tuple[DataFrame, DataFrame]:
    """(impressions, behaviors whose key and time are present), failing if a table is missing."""
    imp_path, beh_path = table_path(lakehouse, "impressions"), table_path(lakehouse, "behaviors")
    for p in (imp_path, beh_path):
        require_table(spark, p, "run jobs/generate_logs.py or jobs/import_dataset.py first")
    return read_table(spark, imp_path), read_table(spark, beh_path).where(~missing_key())


def build_samples(spark: SparkSession, lakehouse: str, date: str, spec: SampleSpec,
                  force: bool = False) -> SamplesResult:
    """Write samples(date) = impressions(date) x UBT(date-1) x behaviors(date, ts < t): one commit
    replacing the date's partition; a committed date is skipped unless ``force``."""
    date = parse_date(date).isoformat()
    out = table_path(lakehouse, "samples")
    skipped = _skipped(spark, out, date, force)
    if skipped:
        return skipped
    ubt_path = table_path(lakehouse, "ubt")
    prev = shift_date(date, -1)
    require_table(spark, ubt_path, f"run `jobs/build_ubt.py --date {prev}` first")
    ubt_version = _check_ubt_fits(spark, ubt_path, prev, spec)
    impressions, behaviors = _log_tables(spark, lakehouse)
    valid, rejects = split_impressions(impressions.where(F.col("dt") == date), date)
    day_b = behaviors.where(F.col("dt") == date)
    first_b = (behaviors.where(F.col("dt") == shift_date(date, -spec.windows.long_days))
               if spec.windows.mode == "time" else None)
    seqs = build_sequences(valid, read_table(spark, ubt_path, ubt_version), day_b, first_b, spec, date)
    return _write_samples(spark, lakehouse, seqs, spec, rejects, date, force, ubt_version=ubt_version,
                          meta={"ubt_version": ubt_version},
                          inputs=f"UBT version {ubt_version}, behaviors dt={date}")


def build_samples_replay(spark: SparkSession, lakehouse: str, first: str, last: str, spec: SampleSpec,
                         force: bool = False) -> SamplesResult:
    """Count mode: the samples of every impression date ``first..last`` in one pass over the behaviors
    table, without the UBT, in one commit replacing those dates (labelled ``first..last``).

    The public-data protocol of the SIM/MIMN papers replays a finished log: each impression's
    sequences are the user's last N behaviors before its time. With an empty UBT and every behavior up
    to ``last`` as the "day" behaviors, :func:`build_sequences` computes exactly what the nightly path
    (UBT(D-1) + day-D behaviors before t) gives for each date, the per-user array being the user's
    whole history: meant for datasets whose users have thousands of behaviors, not for the lifelong
    logs of the nightly path. The leak guard runs as in the nightly job.
    """
    if spec.windows.mode != "count":
        raise ConfigError("replay builds count-mode samples only: add --set windows.mode=count, or run "
                          "the nightly path (jobs/build_ubt.py, then jobs/build_samples.py per date)")
    first, last = parse_date(first).isoformat(), parse_date(last).isoformat()
    if last < first:
        raise ConfigError(f"--backfill {first} is after --date {last}")
    label = f"{first}..{last}"
    out = table_path(lakehouse, "samples")
    skipped = _skipped(spark, out, label, force)
    if skipped:
        return skipped
    impressions, behaviors = _log_tables(spark, lakehouse)
    in_range = f"dt >= '{first}' AND dt <= '{last}'"
    valid, rejects = split_impressions(impressions.where(in_range), last)
    seqs = build_sequences(valid, spark.createDataFrame([], UBT), behaviors.where(F.col("dt") <= last),
                           None, spec)
    return _write_samples(spark, lakehouse, seqs, spec, rejects, label, force, run_date=last,
                          meta={"replay": True, "from": first, "to": last}, inputs=f"behaviors dt<={last}",
                          replace_where=in_range)


def _write_samples(spark: SparkSession, lakehouse: str, seqs: DataFrame, spec: SampleSpec,
                   rejects: DataFrame, label: str, force: bool, *, meta: dict, inputs: str,
                   ubt_version: int | None = None, run_date: str | None = None,
                   replace_where: str | None = None) -> SamplesResult:
    """Commit the run's rejects, then the samples of ``seqs`` under the leak guard (a leak raises
    :class:`LeakError` naming the first offending impression, and no samples are committed)."""
    n_rejects = rejects.count()
    out = table_path(lakehouse, "samples")
    # Rejects first: the samples commit marks the date done, so a crash between the two is re-run whole.
    write_rejects(spark, lakehouse, rejects, run_date or label, [JOB], n_rejects)
    crash_point("build_samples.rejects_written")
    try:
        with retention_on_create(spark, spec.backfill_days):
            committed = write_date(to_samples(seqs, spec, guard=True), out, job=JOB, date=label, force=force,
                                   extra_metadata={**meta, "sizes": spec.sizes},
                                   replace_where=replace_where)
    except Exception as e:  # the guards' raise_error surfaces wrapped in Spark/Py4J exceptions
        if ID_MARK in str(e) and LEAK_MARK not in str(e):
            detail = str(e).split(ID_MARK, 1)[1].split("\n", 1)[0].lstrip(": ")
            raise SamplesInputError(f"samples for {label} not written: {detail}") from None
        if LEAK_MARK not in str(e):
            raise
        hit = first_leak(seqs)
        where = (f"impression_id={hit[0]} (ts={hit[1]})" if hit else str(e).split(LEAK_MARK)[1][:200])
        raise LeakError(f"leak guard: samples for {label} not written: {where} has a behavior at or "
                        f"after its time in a sequence ({inputs})") from None
    from delta.tables import DeltaTable
    head = DeltaTable.forPath(spark, out).history(1).select("version", "operationMetrics").first()
    version = version_for_date(spark, out, JOB, label)
    n = int((head.operationMetrics or {}).get("numOutputRows", -1)) if head.version == version else -1
    set_retention(spark, out, spec.backfill_days)  # after reading the write's own metrics
    log.info("build_samples %s: %d samples from %s (%d rejected) -> version %s%s", label, n, inputs,
             n_rejects, version, "" if committed else " (already committed)")
    return SamplesResult(label, "written", version, ubt_version, n, n_rejects)
