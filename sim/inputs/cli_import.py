"""Import a public dataset (Taobao, MovieLens, Amazon) as canonical behaviors and impressions.

    python jobs/import_dataset.py --format taobao|movielens|amazon --input PATH[,PATH...] --lakehouse DIR

``--input`` is a file, a directory or a comma-separated list (see sim.inputs.importers for the layouts). Bad
lines go to the ``rejects`` table with a reason; the job fails (exit 1) only when more than
``validation.max_reject_ratio`` of an input's lines are rejected, naming the top reasons. Impressions
follow the public-data protocol (sim.inputs.importers.protocol): ``--protocol every`` (the DIN / DIEN /
MIMN papers) makes each behavior after a user's first ``--min-history`` a positive, ``--protocol last``
(default) only each user's last ``--targets-per-user``; each positive gets ``--negatives-per-positive``
seeded items the user never touched, drawn ``uniform`` or by ``popularity``. A user's behaviors sharing
a timestamp get distinct seconds first (``--same-time order``, sim.inputs.importers.same_time). Prints
one summary line.
"""
from __future__ import annotations

import argparse
from typing import Sequence

from sim.adapters.spark import spark_from_conf
from sim.cli import job_entry, job_parser, load_job_conf, report_or_fail
from sim.inputs.importers import FORMATS, NEGATIVE_SCHEMES, PROTOCOLS, SAME_TIME, TAOBAO_DATE_RANGE, Protocol
from sim.inputs.ingest import run_import


def parser() -> argparse.ArgumentParser:
    parser = job_parser(__doc__.splitlines()[0])
    parser.add_argument("--format", required=True, choices=FORMATS)
    parser.add_argument("--input", required=True, action="append",
                        help="file, directory or comma-separated files (repeatable)")
    parser.add_argument("--start-date", default=None,
                        help="first allowed dt (default: 2017-11-25 for taobao, open otherwise; '' = open)")
    parser.add_argument("--end-date", default=None,
                        help="last allowed dt (default: 2017-12-03 for taobao, open otherwise; '' = open)")
    parser.add_argument("--protocol", choices=PROTOCOLS, default="last",
                        help="every: each behavior after a user's first --min-history is a target (the papers); "
                             "last: each user's last --targets-per-user (default %(default)s)")
    parser.add_argument("--targets-per-user", type=int, default=1,
                        help="--protocol last: last behaviors per user turned into targets (default %(default)s)")
    parser.add_argument("--min-history", type=int, default=1,
                        help="behaviors a user has before any target (default %(default)s)")
    parser.add_argument("--negatives-per-positive", type=int, default=1,
                        help="never-touched items per target as negatives (default %(default)s)")
    parser.add_argument("--negatives", choices=NEGATIVE_SCHEMES, default="uniform",
                        help="negatives drawn uniformly over the items or in proportion to their behaviors "
                             "(default %(default)s)")
    parser.add_argument("--min-user-behaviors", type=int, default=0,
                        help="users with fewer accepted behaviors give no target (the papers: 20; default "
                             "%(default)s)")
    parser.add_argument("--same-time", choices=SAME_TIME, default="order",
                        help="order: a user's behaviors sharing a timestamp get distinct seconds, so each "
                             "sees the earlier ones; keep: times as read (default %(default)s)")
    parser.add_argument("--seed", type=int, default=7, help="negative sampling seed (default %(default)s)")
    parser.add_argument("--run-date", default=None,
                        help="dt of this run's rejects (default: the last date of the data)")
    parser.add_argument("--now-ts", type=int, default=None,
                        help="epoch seconds treated as 'now' by validation (default: wall clock)")
    return parser


def protocol_of(args: argparse.Namespace) -> Protocol:
    """The protocol the options ask for (a bad combination raises ConfigError: exit 2)."""
    return Protocol(mode=args.protocol, targets_per_user=args.targets_per_user, min_history=args.min_history,
                    negatives_per_positive=args.negatives_per_positive, negatives=args.negatives,
                    min_user_behaviors=args.min_user_behaviors)


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    cfg = load_job_conf(args)
    default_range = TAOBAO_DATE_RANGE if args.format == "taobao" else (None, None)
    date_range = (default_range[0] if args.start_date is None else (args.start_date or None),
                  default_range[1] if args.end_date is None else (args.end_date or None))
    protocol = protocol_of(args)
    spark = spark_from_conf(cfg, job=f"import_dataset.{args.format}", master=args.master)
    return report_or_fail(f"import_dataset.{args.format}", lambda: run_import(
        spark, args.format, args.input, cfg.lakehouse, max_reject_ratio=cfg.validation.max_reject_ratio,
        date_range=date_range, seed=args.seed, protocol=protocol, same_time=args.same_time,
        run_date=args.run_date, now_ts=args.now_ts))


run = job_entry(main)  # the console script and the jobs/ entry point

if __name__ == "__main__":
    run()
