"""Nightly User Behavior Tree job: UBT(D) = UBT(D-1) + behaviors of D - behaviors leaving the window.

    spark-submit --jars <delta jars> jobs/build_ubt.py --date 2024-06-30 [--backfill 2024-06-01] [--force]
    python jobs/build_ubt.py --lakehouse /abs/lakehouse --date 2024-06-30 --set windows.long_days=90

A committed date is skipped when it was built with this run's settings and inputs; otherwise the job
refuses, naming what changed (--force rebuilds it). A date without behaviors is refused unless
--allow-empty says the day genuinely had none. See :mod:`sim.ubt` for what the index holds and how a
night's cost follows the day's data.
"""
from __future__ import annotations

import sys
import time
from typing import Sequence

from sim.adapters.delta_io import MissingTableError
from sim.adapters.spark import spark_from_conf
from sim.cli import dated_job_parser, job_entry, load_job_conf
from sim.ubt.job import build_ubt
from sim.ubt.settings import UbtStateError


def main(argv: Sequence[str] | None = None) -> int:
    p = dated_job_parser(__doc__.splitlines()[0], date_help="the date D to build UBT(D) for (yyyy-MM-dd)",
                         backfill_help="on an empty index: full build of FROM, then every day up to --date",
                         force_help="rebuild dates already committed (also those built with other settings "
                                    "or inputs, which are refused otherwise)")
    p.add_argument("--allow-empty", action="store_true",
                   help="build dates without behaviors (the day genuinely had none); refused otherwise")
    args = p.parse_args(argv)
    cfg = load_job_conf(args)
    spark = spark_from_conf(cfg, job="build_ubt", master=args.master)
    started = time.perf_counter()
    try:
        results = build_ubt(spark, cfg.lakehouse, args.date, cfg.windows, cfg.caps,
                            backfill_from=args.backfill, force=args.force,
                            backfill_days=cfg.retention.backfill_days, allow_empty=args.allow_empty)
    except (UbtStateError, MissingTableError) as e:
        print(f"build_ubt: {e}", file=sys.stderr)
        return 1
    actions = ", ".join(f"{r.date}:{r.action}" for r in results)
    last = results[-1]
    print(f"BUILD_UBT_OK date={args.date} version={last.version} days={len(results)} "
          f"touched_keys={sum(r.touched_keys for r in results)} "
          f"rollups={sum(bool(r.metrics.get('rollup_block')) for r in results)} "
          f"drops={sum(bool(r.metrics.get('expire_blocks')) for r in results)} "
          f"rejected={sum(r.rejected for r in results)} seconds={time.perf_counter() - started:.1f} "
          f"[{actions}]")
    spark.stop()
    return 0


run = job_entry(main)  # the console script and the jobs/ entry point

if __name__ == "__main__":
    run()
