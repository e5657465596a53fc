"""Samples job: impressions of day D with their point-in-time sequences from UBT(D-1) and day-D
behaviors before each impression.

    spark-submit --jars <delta jars> jobs/build_samples.py --date 2024-06-30 [--force]
    python jobs/build_samples.py --lakehouse /abs/lakehouse --date 2024-06-30 --set windows.mode=count
    python jobs/build_samples.py --date 1998-04-22 --backfill 1997-09-20 --replay --set windows.mode=count

A committed date (or replayed range) is skipped when it was built with this run's settings and inputs;
otherwise the job refuses, naming what changed (--force rebuilds it). A date without impressions or
behaviors is refused unless --allow-empty says the day genuinely had none. See :mod:`sim.samples` for
the sequences, their caps and the leak guard.
"""
from __future__ import annotations

import sys
import time
from typing import Sequence

from sim.adapters.delta_io import MissingTableError
from sim.adapters.spark import spark_from_conf
from sim.cli import dated_job_parser, job_entry, load_job_conf
from sim.samples.contract import LeakError, SamplesInputError, SampleSpec
from sim.samples.job import build_samples, build_samples_replay
from sim.ubt.dates import date_range


def main(argv: Sequence[str] | None = None) -> int:
    p = dated_job_parser(__doc__.splitlines()[0], date_help="impression date D (yyyy-MM-dd)",
                         backfill_help="write samples for every date FROM..D in order",
                         force_help="rewrite dates already committed (also those built with other "
                                    "settings or inputs, which are refused otherwise)")
    p.add_argument("--allow-empty", action="store_true",
                   help="write dates without impressions or behaviors (the day genuinely had none); "
                        "refused otherwise")
    p.add_argument("--replay", action="store_true",
                   help="count mode: every date FROM..D in one pass over the behaviors, one commit, no UBT "
                        "(the public-data protocol)")
    args = p.parse_args(argv)
    cfg = load_job_conf(args)
    spec = SampleSpec.from_conf(cfg)
    spark = spark_from_conf(cfg, job="build_samples", master=args.master)
    dates = date_range(args.backfill, args.date) if args.backfill else [args.date]
    lakehouse = cfg.lakehouse
    opts = {"force": args.force, "allow_empty": args.allow_empty}
    runs = ([lambda: build_samples_replay(spark, lakehouse, dates[0], dates[-1], spec, **opts)]
            if args.replay else [lambda d=d: build_samples(spark, lakehouse, d, spec, **opts) for d in dates])
    results, seconds = [], []
    try:
        for run in runs:
            t = time.perf_counter()
            results.append(run())
            seconds.append(time.perf_counter() - t)
    except (LeakError, SamplesInputError, MissingTableError) as e:
        print(f"build_samples: {e}", file=sys.stderr)
        return 1
    for r, sec in zip(results, seconds):
        print(f"BUILD_SAMPLES_OK date={r.date} action={r.action} version={r.version} "
              f"ubt_version={r.ubt_version} samples={r.impressions} rejected={r.rejected} seconds={sec:.1f}")
    spark.stop()
    return 0


run = job_entry(main)  # the console script and the jobs/ entry point

if __name__ == "__main__":
    run()
