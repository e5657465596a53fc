"""One nightly command for date D, in one Spark session: what a scheduler (cron, Airflow, a platform's
jobs) runs once the logs of D have landed.

    python jobs/nightly.py --date 2024-07-01 [--lakehouse DIR] [--set key=value ...]
    spark-submit --master spark://HOST:7077 --jars <delta jars> jobs/nightly.py --date 2024-07-01 ...

Under spark-submit every stage runs in the driver's one SparkSession (no other JVM is started); the
export's store is a file of the driver's machine (``make cluster-demo`` runs it so).

Stages, in order (DESIGN.md "Flow"):

``import``   the day's own logs (:mod:`sim.inputs.own_logs`) when ``nightly.import`` of the pipeline
             config names them; ``off`` otherwise (the logs of D are loaded by other means);
``ubt``      UBT(D) = UBT(D-1) + behaviors(D) (:func:`sim.ubt.job.build_ubt`), the index the night
             after serves and the samples of D+1 read;
``samples``  samples(D) = impressions(D) x UBT(D-1) x behaviors(D, ts < t)
             (:func:`sim.samples.job.build_samples`): UBT(D-1) is the previous night's;
``export``   UBT(D) into the serving store ``nightly.export.store`` and the switch to it
             (:func:`sim.serving.export.export_ubt`), the snapshot the scoring service reads for the
             requests of D + 1; ``off`` when ``nightly.export`` is not set (null or false).

Each stage is the job's own function, so its re-run rule holds: a stage already done with the same inputs
and settings is ``skipped``, one done with others is refused naming them. The export is done when the
store holds UBT(D) exported from the same lakehouse with the same samples settings and inputs (the UBT
commit of D and the window's first day of behaviors: the fingerprint its snapshot records); otherwise it
exports again. The run stops at the first stage that fails and exits with that stage's status
(:data:`EXIT_STATUS`: import 10, ubt 11, samples 12, export 13); run again once the cause is fixed, it
resumes there (the stages before it are skipped). One line per stage is printed.
"""
from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from typing import Callable, Sequence

from pyspark.sql import SparkSession

from sim.adapters.delta_io import MissingTableError
from sim.config import ConfigError, PipelineConfig

log = logging.getLogger(__name__)

STAGES = ("import", "ubt", "samples", "export")
# The exit status of a run stopped by a stage (2 and 3 stay the jobs' configuration and store failures).
EXIT_STATUS = {"import": 10, "ubt": 11, "samples": 12, "export": 13}


@dataclass
class StageResult:
    stage: str
    status: str  # off | skipped | written | failed | not run
    detail: str = ""
    seconds: float = 0.0

    def line(self, date: str) -> str:
        code = f" (exit {EXIT_STATUS[self.stage]})" if self.status == "failed" else ""
        detail = " ".join(self.detail.split())  # one line, whatever the cause's message spans
        return (f"nightly {date} {self.stage}: {self.status}{code}" + (f" {detail}" if detail else "")
                + (f" [{self.seconds:.1f}s]" if self.seconds else ""))


def _import(spark: SparkSession, cfg: PipelineConfig, date: str) -> tuple[str, str]:
    from sim.inputs.own_logs import LogSource, import_logs
    imp = cfg.nightly.import_
    if imp is None or (imp.behaviors is None and imp.impressions is None):
        return "off", "(nightly.import not set)"
    sources = [LogSource(t, s.location, input_format=s.input_format, mapping=s.map, ts_unit=s.ts_unit,
                         ts_format=s.ts_format, where=s.where)
               for t, s in (("behaviors", imp.behaviors), ("impressions", imp.impressions)) if s is not None]
    report = import_logs(spark, cfg.lakehouse, date, sources, max_reject_ratio=cfg.validation.max_reject_ratio,
                         allow_empty=imp.allow_empty)
    written = [t for t in ("behaviors", "impressions") if report.committed.get(t)]
    detail = " ".join(f"{t}={report.written[t]}" for t in written)
    return ("written" if written else "skipped"), detail


def _ubt(spark: SparkSession, cfg: PipelineConfig, date: str) -> tuple[str, str]:
    from sim.ubt.job import build_ubt
    r = build_ubt(spark, cfg.lakehouse, date, cfg.windows, cfg.caps,
                  backfill_days=cfg.retention.backfill_days)[-1]
    return ("skipped" if r.action == "skipped" else "written"), f"UBT({date}) version={r.version}"


def _samples(spark: SparkSession, cfg: PipelineConfig, date: str) -> tuple[str, str]:
    from sim.samples.contract import SampleSpec
    from sim.samples.job import build_samples
    r = build_samples(spark, cfg.lakehouse, date, SampleSpec.from_conf(cfg))
    detail = f"samples({date}) version={r.version}" + (f" samples={r.impressions}" if r.action != "skipped" else "")
    return r.action, detail


def _export(spark: SparkSession, cfg: PipelineConfig, date: str) -> tuple[str, str]:
    import sqlite3

    from sim.samples.contract import SampleSpec
    from sim.serving.export import export_ubt
    from sim.serving.store import StoreUnavailable, open_store
    exp = cfg.nightly.export
    if exp is None:
        log.info("nightly %s export: off (nightly.export is not set: no serving store to export UBT(%s) into)",
                 date, date)
        return "off", "(nightly.export not set)"
    try:
        store = open_store(exp.store, create=True)  # a file, or a redis:// server
        r = export_ubt(spark, cfg.lakehouse, date, SampleSpec.from_conf(cfg), store, skip_done=True)
    except (OSError, sqlite3.Error) as e:
        raise StoreUnavailable(f"the serving store {exp.store} (nightly.export.store) cannot be written: {e}; "
                               f"fix the path or its permissions") from e
    detail = f"UBT({date}) version={r.ubt_version} -> {store.name} generation={r.snapshot.generation}"
    return r.action, detail + (f" users={r.users} keys={r.keys}" if r.action == "written" else "")


def _failures() -> tuple[type[BaseException], ...]:
    """What a stage raises when its inputs or settings do not allow the date (each names the cause)."""
    from sim.inputs.validation import ValidationError
    from sim.samples.contract import LeakError, SamplesInputError
    from sim.serving.store import StoreUnavailable
    from sim.ubt.settings import UbtStateError
    return (ConfigError, MissingTableError, ValidationError, UbtStateError, SamplesInputError, LeakError,
            StoreUnavailable)


def run_nightly(spark: SparkSession, cfg: PipelineConfig, date: str,
                report: Callable[[StageResult], None] | None = None) -> list[StageResult]:
    """The stages of the night of ``date`` in order, stopping at the first that fails (its result has
    status ``failed`` and the cause; the later ones ``not run``). ``report`` is called with each result
    as it is known."""
    from sim.ubt.dates import parse_date
    date = parse_date(date).isoformat()
    stages = {"import": _import, "ubt": _ubt, "samples": _samples, "export": _export}
    results: list[StageResult] = []
    failed = False
    for name in STAGES:
        if failed:
            res = StageResult(name, "not run")
        else:
            started = time.perf_counter()
            try:
                status, detail = stages[name](spark, cfg, date)
            except _failures() as e:
                log.error("nightly %s %s: %s", date, name, e)
                status, detail, failed = "failed", str(e), True
            res = StageResult(name, status, detail, time.perf_counter() - started)
        results.append(res)
        if report:
            report(res)
    return results


def exit_status(results: Sequence[StageResult]) -> int:
    """0, or the status of the stage that failed."""
    return next((EXIT_STATUS[r.stage] for r in results if r.status == "failed"), 0)


def main(argv: Sequence[str] | None = None) -> int:
    from sim.adapters.spark import spark_from_conf
    from sim.cli import job_parser, load_job_conf
    p = job_parser(__doc__.splitlines()[0])
    p.add_argument("--date", required=True, help="the date D of the night (yyyy-MM-dd)")
    args = p.parse_args(argv)
    cfg = load_job_conf(args)
    spark = spark_from_conf(cfg, job="nightly", master=args.master)
    results = run_nightly(spark, cfg, args.date, report=lambda r: print(r.line(args.date), flush=True))
    status = exit_status(results)
    if status:
        failed = next(r for r in results if r.status == "failed")
        print(f"nightly {args.date}: stopped at {failed.stage}; fix the cause and run the same command again "
              f"(the stages done are skipped)", file=sys.stderr)
    spark.stop()
    return status


def run() -> None:
    """The console script and the jobs/ entry point (exits with the status of :func:`main`)."""
    from sim.cli import run_job
    run_job(main)


if __name__ == "__main__":
    run()
