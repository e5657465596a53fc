"""Import a day of your own logs (behaviors and impressions in the canonical shape, under your column names).

    python jobs/import_logs.py --date 2024-07-01 --behaviors 'logs/{date}/behaviors.csv' \\
        --impressions 'logs/{date}/impressions.jsonl' --map user_id=uid --map behaviors.ts=event_time \\
        --ts-unit behaviors=ms --lakehouse ./lakehouse

Every row read is a row of ``--date`` (by its ``ts`` in UTC) or a reject with a reason; ``{date}`` in a
path (or in ``--where``) is replaced by the date. ``--map [TABLE.]COLUMN=SOURCE`` names the source column
(or a Spark SQL expression) of a canonical column, for both tables or one; ``--ts-unit``,
``--ts-format``, ``--input-format`` and ``--where`` take ``VALUE`` for both tables or ``TABLE=VALUE`` for
one. A date already imported from the same input and settings is left as it is; from another input it
is refused naming the change (``--force`` rewrites it); a date without rows is refused (``--allow-empty``).
See :mod:`sim.inputs.own_logs`. Prints one summary line.
"""
from __future__ import annotations

import argparse
from typing import Sequence

from sim.adapters.spark import spark_from_conf
from sim.cli import job_entry, job_parser, load_job_conf, report_or_fail
from sim.config import ConfigError
from sim.inputs import LOGS_JOB
from sim.inputs.canonical import BEHAVIORS_TABLE, IMPRESSIONS_TABLE
from sim.inputs.own_logs import INPUT_FORMATS, TS_UNITS, LogSource, columns_of, import_logs

TABLES = (BEHAVIORS_TABLE, IMPRESSIONS_TABLE)


def parser() -> argparse.ArgumentParser:
    p = job_parser(__doc__.splitlines()[0])
    p.add_argument("--date", required=True, help="the date D to import (yyyy-MM-dd, UTC)")
    p.add_argument("--behaviors", default=None, metavar="PATH|TABLE", help="the day's behaviors")
    p.add_argument("--impressions", default=None, metavar="PATH|TABLE", help="the day's impressions")
    p.add_argument("--map", dest="mapping", action="append", default=[], metavar="[TABLE.]COLUMN=SOURCE",
                   help="the source column (or SQL expression) of a canonical column (repeatable)")
    p.add_argument("--ts-unit", action="append", default=[], metavar="[TABLE=]UNIT",
                   help=f"unit of a numeric ts: {', '.join(TS_UNITS)} (default s)")
    p.add_argument("--ts-format", action="append", default=[], metavar="[TABLE=]PATTERN",
                   help="Spark datetime pattern of a string ts, e.g. 'yyyy-MM-dd HH:mm:ss' (UTC)")
    p.add_argument("--input-format", action="append", default=[], metavar="[TABLE=]FORMAT",
                   help=f"{', '.join(INPUT_FORMATS)} (default: from the path)")
    p.add_argument("--where", action="append", default=[], metavar="[TABLE=]CONDITION",
                   help="Spark SQL selecting the day's rows of a source holding other days too")
    p.add_argument("--force", action="store_true", help="rewrite a date imported from another input")
    p.add_argument("--allow-empty", action="store_true",
                   help="commit a date without rows (the day genuinely had none); refused otherwise")
    p.add_argument("--now-ts", type=int, default=None,
                   help="epoch seconds treated as 'now' by validation (default: wall clock)")
    return p


def per_table(values: Sequence[str], option: str) -> dict[str, str]:
    """``VALUE`` (both tables) or ``TABLE=VALUE`` (one) options as {table: value}; a table's own wins."""
    out: dict[str, str] = {}
    both = None
    for v in values:
        head, sep, rest = v.partition("=")
        if sep and head in TABLES:
            out[head] = rest
        elif both is None:
            both = v
        else:
            raise ConfigError(f"{option} given twice for both tables ({both!r}, {v!r}); prefix one with TABLE=")
    return {t: out.get(t, both) for t in TABLES}


def mappings(values: Sequence[str]) -> dict[str, dict[str, str]]:
    """``--map`` options as {table: {canonical column: source}}: ``COLUMN=SOURCE`` for each table having
    that column, ``TABLE.COLUMN=SOURCE`` for one (it wins)."""
    out: dict[str, dict[str, str]] = {t: {} for t in TABLES}
    own: dict[str, dict[str, str]] = {t: {} for t in TABLES}
    for v in values:
        key, sep, source = v.partition("=")
        if not sep or not key.strip() or not source.strip():
            raise ConfigError(f"--map {v!r}: expected [TABLE.]COLUMN=SOURCE, e.g. --map user_id=uid")
        table, dot, column = key.strip().rpartition(".")
        if dot and table not in TABLES:
            raise ConfigError(f"--map {v!r}: {table!r} is not one of {', '.join(TABLES)}")
        having = [table] if dot else [t for t in TABLES if column in columns_of(t)]
        if not having:
            raise ConfigError(f"--map {v!r}: {column!r} is a column of neither table (behaviors: "
                              f"{', '.join(columns_of(BEHAVIORS_TABLE))}; impressions: "
                              f"{', '.join(columns_of(IMPRESSIONS_TABLE))})")
        for t in having:
            (own if dot else out)[t][column] = source.strip()
    return {t: {**out[t], **own[t]} for t in TABLES}


def sources_of(args: argparse.Namespace) -> list[LogSource]:
    """The sources the options describe (ConfigError when none or an option does not fit)."""
    given = {t: getattr(args, t) for t in TABLES if getattr(args, t)}
    if not given:
        raise ConfigError("give --behaviors PATH and/or --impressions PATH: the day's logs to import")
    maps = mappings(args.mapping)
    units, formats = per_table(args.ts_unit, "--ts-unit"), per_table(args.ts_format, "--ts-format")
    inputs, wheres = per_table(args.input_format, "--input-format"), per_table(args.where, "--where")
    out = []
    for t, location in given.items():
        out.append(LogSource(t, location, input_format=inputs[t], mapping=maps[t], ts_unit=units[t],
                             ts_format=formats[t], where=wheres[t]))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    cfg = load_job_conf(args)
    sources = sources_of(args)
    spark = spark_from_conf(cfg, job=LOGS_JOB, master=args.master)
    return report_or_fail(LOGS_JOB, lambda: import_logs(
        spark, cfg.lakehouse, args.date, sources, max_reject_ratio=cfg.validation.max_reject_ratio,
        force=args.force, allow_empty=args.allow_empty, now_ts=args.now_ts))


run = job_entry(main)  # the console script and the jobs/ entry point

if __name__ == "__main__":
    run()
