"""Shared command-line plumbing for the thin entry points in ``jobs/``: ``--conf``, ``--lakehouse``,
``--set key=value`` overrides, ``--master``, logging, and the SparkSession from the pipeline config."""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable, Sequence

from sim.config import ConfigError, DEFAULT_PIPELINE_CONF, PipelineConfig, load_pipeline_conf


def job_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--conf", default=str(DEFAULT_PIPELINE_CONF), help="pipeline YAML (default %(default)s)")
    p.add_argument("--lakehouse", default=None, help="lakehouse root (default: `lakehouse` of the conf)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set windows.long_days=90 (repeatable)")
    p.add_argument("--master", default=None, help="Spark master (ignored under spark-submit)")
    return p


def dated_job_parser(description: str, date_help: str, backfill_help: str,
                     force_help: str) -> argparse.ArgumentParser:
    """A nightly job's parser: ``--date D``, ``--backfill FROM`` and ``--force`` on top of :func:`job_parser`."""
    p = job_parser(description)
    p.add_argument("--date", required=True, help=date_help)
    p.add_argument("--backfill", metavar="FROM", default=None, help=backfill_help)
    p.add_argument("--force", action="store_true", help=force_help)
    return p


def report_or_fail(job: str, ingest: Callable[[], object]) -> int:
    """Run an ingest (generator or importer) and print its summary; a validation failure (too many
    rejects) prints its reasons and returns 1."""
    from sim.inputs.validation import ValidationError
    try:
        report = ingest()
    except ValidationError as e:
        logging.getLogger("sim").error("%s", e)
        print(f"{job}: FAILED: {e}", flush=True)
        return 1
    for line in getattr(report, "details", []):
        print(f"{job}: {line}", flush=True)
    print(report.summary(), flush=True)
    return 0


def setup_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr, force=True)
    for noisy in ("py4j", "urllib3", "matplotlib", "alembic", "git"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def load_job_conf(args: argparse.Namespace) -> PipelineConfig:
    return load_pipeline_conf(args.conf, args.overrides, args.lakehouse)


def run_job(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> None:
    """Run a job's ``main``; a configuration mistake exits 2 with its message instead of a traceback, a
    failure of the object store (:func:`sim.adapters.storage.store_failure`) exits 3 naming the store."""
    setup_logging()
    try:
        rc = main(argv)
    except ConfigError as e:
        logging.getLogger("sim").error("%s", e)
        sys.exit(2)
    except Exception as e:  # noqa: BLE001 - re-raised unless it is the object store failing
        from sim.adapters.storage import store_failure
        message = store_failure(e)
        if message is None:
            raise
        # What a run stopped by the store left: dates it committed before stay committed (a re-run skips
        # them); the date it was building has no commit, so its table's last version is the one before.
        logging.getLogger("sim").error("%s: %s. Nothing of the date being built was committed; re-run the "
                                       "job once the store answers.", main.__module__, message)
        sys.exit(3)
    sys.exit(rc or 0)


def job_entry(main: Callable[[Sequence[str] | None], int | None]) -> Callable[[], None]:
    """A job's console script (``setup.cfg``) and ``jobs/`` entry point: :func:`run_job` of its ``main``."""
    def run() -> None:
        run_job(main)
    run.__doc__ = f"Run {main.__module__} from the command line (exits with its status)."
    return run
