"""The nightly samples job: samples(D) from impressions(D), UBT(D-1) and behaviors(D, ts < t).

Each commit records the settings the rows depend on (:attr:`SampleSpec.settings`) and what it read:
the impressions and behaviors (versions and the files of the dates read) and the UBT(D-1) version
(sim.adapters.lineage). A committed date is skipped only when a run today would record the same; a
changed setting, a rebuilt UBT(D-1) or re-imported logs are refused, naming what changed, unless
``force``. A date without impressions or behaviors is refused and nothing is committed, unless
``allow_empty`` says the day genuinely had none.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from sim.config import ConfigError
from sim.adapters.delta_io import (Commit, commit_age_days, job_commits, last_commit, read_table, require_table,
                                   retention_on_create, set_retention, table_path, version_for_date,
                                   write_date)
from sim.adapters.lineage import (TableRead, empty_input, job_date_read, rerun_refusal, run_record,
                                  table_read)
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


def check_ubt_fits(spark: SparkSession, ubt_path: str, prev: str, spec: SampleSpec) -> tuple[int, dict]:
    """(the version of UBT(prev), what the commit records of it) after checking it fits ``spec`` (also
    what the export of UBT(prev) into the serving store reads: sim.serving.export)."""
    commits = job_commits(spark, ubt_path, UBT_JOB)
    version = max((c.version for c in commits if c.date == prev), default=None)
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
    return version, job_date_read(spark, ubt_path, UBT_JOB, prev, commits)


def past_horizon(prev: str, ubt_path: str, days: int, why: str) -> str:
    return (f"UBT({prev}) is past the backfill horizon of {days} days (retention.backfill_days) of "
            f"{ubt_path}: {why}, and VACUUM or log clean-up may have removed it. Rebuild the index "
            f"from an earlier date with `jobs/build_ubt.py --date {prev} --backfill FROM --force`, or "
            f"raise retention.backfill_days before the dates you need age out")


def _skipped(spark: SparkSession, lakehouse: str, label: str, force: bool, spec: SampleSpec
             ) -> SamplesResult | None:
    """The result of a run whose ``label`` is already committed with the settings and inputs this run
    would record (None when it must run); a commit with other ones is refused unless ``force``."""
    if force:
        return None
    done: Commit | None = max((c for c in job_commits(spark, table_path(lakehouse, "samples"), JOB)
                               if c.date == label), key=lambda c: c.version, default=None)
    if done is None:
        return None
    paths = {t: table_path(lakehouse, t) for t in ("impressions", "behaviors", "ubt")}
    refusal = rerun_refusal(spark, done, spec.settings, paths, f"samples({label})",
                            "Rebuild them with --force")
    if refusal:
        raise SamplesInputError(refusal)
    log.info("build_samples %s: already committed (version %s) with these settings and inputs; nothing "
             "to do", label, done.version)
    return SamplesResult(label, "skipped", done.version)


def _log_reads(spark: SparkSession, lakehouse: str, label: str, imp_where: str, beh_where: str,
               allow_empty: bool) -> tuple[TableRead, TableRead]:
    """What the run reads of impressions and behaviors (failing if a table is missing); refuses a
    ``label`` without rows in either unless ``allow_empty``."""
    reads = []
    for table, where in (("impressions", imp_where), ("behaviors", beh_where)):
        path = table_path(lakehouse, table)
        require_table(spark, path, "run jobs/generate_logs.py or jobs/import_dataset.py first")
        read = table_read(spark, path, where)
        if read.empty and not allow_empty:
            raise SamplesInputError(empty_input(table, label, where, path, read.version, f"samples({label})"))
        reads.append(read)
    return reads[0], reads[1]


def _pinned(spark: SparkSession, lakehouse: str, table: str, read: TableRead) -> DataFrame:
    """The rows of ``table`` at the version ``read`` recorded (behaviors: those whose key and time
    are present)."""
    df = read_table(spark, table_path(lakehouse, table), read.version)
    return df.where(~missing_key()) if table == "behaviors" else df


def build_samples(spark: SparkSession, lakehouse: str, date: str, spec: SampleSpec,
                  force: bool = False, allow_empty: bool = False) -> SamplesResult:
    """Write samples(date) = impressions(date) x UBT(date-1) x behaviors(date, ts < t): one commit
    replacing the date's partition. A committed date is skipped when its commit records this run's
    settings and inputs, refused otherwise, unless ``force``; a date without impressions or behaviors
    is refused unless ``allow_empty``."""
    date = parse_date(date).isoformat()
    skipped = _skipped(spark, lakehouse, date, force, spec)
    if skipped:
        return skipped
    ubt_path = table_path(lakehouse, "ubt")
    prev = shift_date(date, -1)
    require_table(spark, ubt_path, f"run `jobs/build_ubt.py --date {prev}` first")
    ubt_version, ubt_read = check_ubt_fits(spark, ubt_path, prev, spec)
    day = f"dt = '{date}'"
    imp, beh = _log_reads(spark, lakehouse, date, day, day, allow_empty)
    # Time mode also reads the window's first day: the UBT(D-1) behaviors that leave the window at t.
    first_day = shift_date(date, -spec.windows.long_days) if spec.windows.mode == "time" else None
    if first_day:
        beh = table_read(spark, table_path(lakehouse, "behaviors"), f"dt IN ('{date}', '{first_day}')",
                         beh.version)
    impressions = _pinned(spark, lakehouse, "impressions", imp)
    behaviors = _pinned(spark, lakehouse, "behaviors", beh)
    valid, rejects = split_impressions(impressions.where(F.col("dt") == date), date)
    day_b = behaviors.where(F.col("dt") == date)
    first_b = behaviors.where(F.col("dt") == first_day) if first_day else None
    seqs = build_sequences(valid, read_table(spark, ubt_path, ubt_version), day_b, first_b, spec, date)
    reads = {"impressions": imp.record(), "behaviors": beh.record(), "ubt": ubt_read}
    return _write_samples(spark, lakehouse, seqs, spec, rejects, date, force, ubt_version=ubt_version,
                          meta={"ubt_version": ubt_version, **run_record(spec.settings, reads)},
                          inputs=f"UBT version {ubt_version}, behaviors dt={date}")


def build_samples_replay(spark: SparkSession, lakehouse: str, first: str, last: str, spec: SampleSpec,
                         force: bool = False, allow_empty: bool = False) -> SamplesResult:
    """Count mode: the samples of every impression date ``first..last`` in one pass over the behaviors
    table, without the UBT, in one commit replacing those dates (labelled ``first..last``).

    The public-data protocol of the SIM/MIMN papers replays a finished log: each impression's
    sequences are the user's last N behaviors before its time. With an empty UBT and every behavior up
    to ``last`` as the "day" behaviors, :func:`build_sequences` computes exactly what the nightly path
    (UBT(D-1) + day-D behaviors before t) gives for each date, the per-user array being the user's
    whole history: meant for datasets whose users have thousands of behaviors, not for the lifelong
    logs of the nightly path. The leak guard runs as in the nightly job. Re-runs and empty inputs
    follow the rules of :func:`build_samples`: the commit records the impressions and behaviors it
    read, so a re-import under a committed range is refused (rebuilt with ``force``).
    """
    if spec.windows.mode != "count":
        raise ConfigError("replay builds count-mode samples only: add --set windows.mode=count, or run "
                          "the nightly path (jobs/build_ubt.py, then jobs/build_samples.py per date)")
    first, last = parse_date(first).isoformat(), parse_date(last).isoformat()
    if last < first:
        raise ConfigError(f"--backfill {first} is after --date {last}")
    label = f"{first}..{last}"
    skipped = _skipped(spark, lakehouse, label, force, spec)
    if skipped:
        return skipped
    in_range = f"dt >= '{first}' AND dt <= '{last}'"
    imp, beh = _log_reads(spark, lakehouse, label, in_range, f"dt <= '{last}'", allow_empty)
    valid, rejects = split_impressions(_pinned(spark, lakehouse, "impressions", imp).where(in_range), last)
    seqs = build_sequences(valid, spark.createDataFrame([], UBT),
                           _pinned(spark, lakehouse, "behaviors", beh).where(F.col("dt") <= last), None, spec)
    reads = {"impressions": imp.record(), "behaviors": beh.record()}
    return _write_samples(spark, lakehouse, seqs, spec, rejects, label, force, run_date=last,
                          meta={"replay": True, "from": first, "to": last, **run_record(spec.settings, reads)},
                          inputs=f"behaviors dt<={last}", replace_where=in_range)


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
    head = last_commit(spark, out)
    version = version_for_date(spark, out, JOB, label)
    n = int(head.metrics.get("numOutputRows", -1)) if head.version == version else -1
    set_retention(spark, out, spec.backfill_days)  # after reading the write's own metrics
    log.info("build_samples %s: %d samples from %s (%d rejected) -> version %s%s", label, n, inputs,
             n_rejects, version, "" if committed else " (already committed)")
    return SamplesResult(label, "written", version, ubt_version, n, n_rejects)
