"""Shared command-line plumbing for the thin entry points in ``jobs/``: ``--conf``, ``--lakehouse``,
``--set key=value`` overrides, ``--master``, logging, and the SparkSession from the pipeline config."""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable, Sequence

from sim.config import ConfigError, DEFAULT_PIPELINE_CONF, load_pipeline_conf


def job_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--conf", default=str(DEFAULT_PIPELINE_CONF), help="pipeline YAML (default %(default)s)")
    p.add_argument("--lakehouse", default=None, help="lakehouse root (default: `lakehouse` of the conf)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set windows.long_days=90 (repeatable)")
    p.add_argument("--master", default=None, help="Spark master (ignored under spark-submit)")
    return p


def setup_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    for noisy in ("py4j", "urllib3", "matplotlib", "alembic", "git"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def load_job_conf(args: argparse.Namespace) -> dict:
    return load_pipeline_conf(args.conf, args.overrides, args.lakehouse)


def run_job(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> None:
    """Run a job's ``main``; a configuration mistake exits 2 with its message instead of a traceback."""
    setup_logging()
    try:
        rc = main(argv)
    except ConfigError as e:
        logging.getLogger("sim").error("%s", e)
        sys.exit(2)
    sys.exit(rc or 0)
