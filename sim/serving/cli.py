"""Export UBT(D) into the serving store and switch to it (and load a day's behaviors for the append path).

    spark-submit --jars <delta jars> jobs/export_ubt.py --date 2024-06-30 --store serving/ubt.sqlite
    python jobs/export_ubt.py --lakehouse /abs/lakehouse --date 2024-06-30 --store ubt.sqlite --append-day 2024-07-01

``--date D`` exports UBT(D), the index the requests of D + 1 read; ``--append-day DAY`` loads the
behaviors of DAY (a micro-batch of the append path; re-running it replaces that day's). The pipeline
config (``--conf``, ``--set``) gives the lakehouse, windows and caps: the same as the samples job's.
"""
from __future__ import annotations

import sys
import time
from typing import Sequence

from sim.adapters.delta_io import MissingTableError
from sim.adapters.spark import spark_from_conf
from sim.cli import job_entry, job_parser, load_job_conf


def main(argv: Sequence[str] | None = None) -> int:
    from sim.samples.contract import SampleSpec, SamplesInputError
    from sim.serving.export import append_day, export_ubt
    from sim.serving.store import StoreUnavailable, open_store

    p = job_parser(__doc__.splitlines()[0])
    p.add_argument("--date", default=None, help="export UBT(D) (yyyy-MM-dd) and make it the current snapshot")
    p.add_argument("--store", required=True, help="the serving store: a file (the embedded store, created if "
                   "missing) or redis://HOST:PORT/DB (a Redis or Valkey server)")
    p.add_argument("--append-day", default=None, metavar="DAY",
                   help="load the behaviors of DAY into the append path (replacing that day's)")
    args = p.parse_args(argv)
    if not args.date and not args.append_day:
        p.error("give --date D (export UBT(D)) and/or --append-day DAY")
    cfg = load_job_conf(args)
    spec = SampleSpec.from_conf(cfg)
    store = open_store(args.store, create=True)
    spark = spark_from_conf(cfg, job="export_ubt", master=args.master)
    started = time.perf_counter()
    try:
        if args.date:
            r = export_ubt(spark, cfg.lakehouse, args.date, spec, store)
            print(f"EXPORT_UBT_OK date={r.date} ubt_version={r.ubt_version} users={r.users} keys={r.keys} "
                  f"generation={r.snapshot.generation} store={args.store} "
                  f"seconds={time.perf_counter() - started:.1f}")
        if args.append_day:
            n = append_day(spark, cfg.lakehouse, args.append_day, store)
            print(f"APPEND_DAY_OK date={args.append_day} behaviors={n} store={args.store}")
    except (MissingTableError, StoreUnavailable, SamplesInputError) as e:
        print(f"export_ubt: {e}", file=sys.stderr)
        return 1
    spark.stop()
    return 0


run = job_entry(main)

if __name__ == "__main__":
    run()
