"""Import a public dataset (Taobao, MovieLens, Amazon) as canonical behaviors and impressions.

    python jobs/import_dataset.py --format taobao|movielens|amazon --input PATH[,PATH...] --lakehouse DIR

``--input`` is a file, a directory or a comma-separated list (see sim.inputs.importers for the layouts). Bad
lines go to the ``rejects`` table with a reason; the job fails (exit 1) only when more than
``validation.max_reject_ratio`` of an input's lines are rejected, naming the top reasons. Impressions
follow the public-data protocol of SIM/MIMN (the user's next behavior is the positive, a seeded item the
user never touched the negative). Prints one summary line.
"""
from __future__ import annotations

from typing import Sequence

from sim.adapters.spark import spark_from_conf
from sim.cli import job_entry, job_parser, load_job_conf, report_or_fail
from sim.inputs.importers import FORMATS, TAOBAO_DATE_RANGE
from sim.inputs.ingest import run_import


def main(argv: Sequence[str] | None = None) -> int:
    parser = job_parser(__doc__.splitlines()[0])
    parser.add_argument("--format", required=True, choices=FORMATS)
    parser.add_argument("--input", required=True, action="append",
                        help="file, directory or comma-separated files (repeatable)")
    parser.add_argument("--start-date", default=None,
                        help="first allowed dt (default: 2017-11-25 for taobao, open otherwise; '' = open)")
    parser.add_argument("--end-date", default=None,
                        help="last allowed dt (default: 2017-12-03 for taobao, open otherwise; '' = open)")
    parser.add_argument("--targets-per-user", type=int, default=1,
                        help="last behaviors per user turned into impressions (default %(default)s)")
    parser.add_argument("--seed", type=int, default=7, help="negative sampling seed (default %(default)s)")
    parser.add_argument("--run-date", default=None,
                        help="dt of this run's rejects (default: the last date of the data)")
    parser.add_argument("--now-ts", type=int, default=None,
                        help="epoch seconds treated as 'now' by validation (default: wall clock)")
    args = parser.parse_args(argv)
    cfg = load_job_conf(args)
    default_range = TAOBAO_DATE_RANGE if args.format == "taobao" else (None, None)
    date_range = (default_range[0] if args.start_date is None else (args.start_date or None),
                  default_range[1] if args.end_date is None else (args.end_date or None))
    spark = spark_from_conf(cfg, app_name=f"import_dataset.{args.format}", master=args.master)
    return report_or_fail(f"import_dataset.{args.format}", lambda: run_import(
        spark, args.format, args.input, cfg.lakehouse, max_reject_ratio=cfg.validation.max_reject_ratio,
        date_range=date_range, seed=args.seed, targets_per_user=args.targets_per_user,
        run_date=args.run_date, now_ts=args.now_ts))


run = job_entry(main)  # the console script and the jobs/ entry point

if __name__ == "__main__":
    run()
