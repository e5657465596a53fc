"""A team's own logs, one day at a time: ``behaviors`` and ``impressions`` already in the canonical shape
(:mod:`sim.inputs.schema`), read from Parquet, CSV (with a header), JSON lines, a Delta table or a Spark
table, under the team's column names and time unit.

Each run imports one date D. Every row read is either a row of D or a reject: the rows whose ``ts`` (UTC,
the pipeline's day convention, :func:`sim.inputs.canonical.dt_of`) falls on another day are rejected as
``ts_outside_run_date``, so a run is given the day's files (``{date}`` in a path is replaced by D) or, for a
table that holds every day, the day's rows selected with ``where``. The rows are validated like every
importer's (:mod:`sim.inputs.validation`; reasons in ``rejects``, the run fails above
``validation.max_reject_ratio``) and written by :func:`sim.inputs.canonical.write_log_table` as the
``dt = D`` partition, the rejects of the run first (:mod:`sim.inputs.rejects`).

Per date, the re-run rule of the nightly jobs (:mod:`sim.adapters.lineage`): each table's commit for D
records the settings (format, column mapping, time unit or format, ``where``) and what was read (rows and
a digest of their content); a re-run with the same is a no-op, a re-run whose input for D changed is
refused naming each change (``force`` rewrites D), since the UBT and samples built on D would then need a
rebuild too. A day without rows is refused naming the table (``allow_empty`` commits it): an empty
commit would mark D done and the day's data landing later would be skipped.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import Mapping, Sequence

from pyspark.errors import AnalysisException
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from sim.adapters.delta_io import Commit, job_commits, table_path
from sim.adapters.lineage import fingerprint, run_changes, run_record
from sim.config import ConfigError, parse_date
from sim.inputs import LOGS_JOB
from sim.inputs.canonical import (BEHAVIORS_TABLE, IMPRESSIONS_TABLE, to_behaviors, to_impressions, to_rejects,
                                  write_log_table)
from sim.inputs.ingest import CheckedInput, IngestReport, check_input, enforce_ratios
from sim.inputs.rejects import REJECTS_TABLE, write_rejects
from sim.inputs.validation import (MALFORMED, PROBABILITY_COLS, ValidationError, classify_behaviors,
                                   classify_impressions)

log = logging.getLogger(__name__)

INPUT_FORMATS = ("parquet", "csv", "json", "delta", "table")
TS_UNITS = {"s": 1, "ms": 1_000, "us": 1_000_000}
# The canonical columns a source must give (under its own names) and those it may leave out.
REQUIRED = {BEHAVIORS_TABLE: ("user_id", "item_id", "category_id", "behavior_type", "ts"),
            IMPRESSIONS_TABLE: ("impression_id", "user_id", "item_id", "category_id", "ts", "label")}
OPTIONAL = {BEHAVIORS_TABLE: (), IMPRESSIONS_TABLE: PROBABILITY_COLS}


def columns_of(table: str) -> tuple[str, ...]:
    """The canonical columns a source of ``table`` may give."""
    return REQUIRED[table] + OPTIONAL[table]


_EXTENSIONS = {".parquet": "parquet", ".csv": "csv", ".json": "json", ".jsonl": "json", ".ndjson": "json"}
_ZONE_LETTERS = set("XxZzOV")


@dataclass(frozen=True)
class LogSource:
    """Where one table's rows of a day come from and how they map onto its canonical columns.

    Args:
        table: ``behaviors`` or ``impressions``.
        location: a file, a directory or a glob (``{date}`` is replaced by the run's date), a Delta
            table's path, or a Spark table's name.
        input_format: one of :data:`INPUT_FORMATS`; None = from the path (a ``_delta_log``, the
            extension, or a name that is no path: a Spark table).
        mapping: canonical column -> the source's column, or a Spark SQL expression over its columns
            (``behavior_type=lower(action)``); unmapped columns are read under their canonical name.
        ts_unit: the unit of a numeric ``ts`` (``s``, ``ms``, ``us``); None = seconds, or a
            ``yyyy-MM-dd[ HH:mm:ss]`` string.
        ts_format: a Spark datetime pattern of a string ``ts`` (read as UTC unless it holds a zone).
        where: a Spark SQL condition selecting the day's rows of a source that holds other days
            (``{date}`` replaced), applied before anything is counted.
    """
    table: str
    location: str
    input_format: str | None = None
    mapping: Mapping[str, str] = field(default_factory=dict)
    ts_unit: str | None = None
    ts_format: str | None = None
    where: str | None = None

    def __post_init__(self) -> None:
        if self.table not in REQUIRED:
            raise ConfigError(f"table {self.table!r} is not one of {', '.join(REQUIRED)}")
        if self.input_format is not None and self.input_format not in INPUT_FORMATS:
            raise ConfigError(f"{self.table}: input format {self.input_format!r} is not one of "
                              f"{', '.join(INPUT_FORMATS)}")
        if self.ts_unit is not None and self.ts_unit not in TS_UNITS:
            raise ConfigError(f"{self.table}: ts unit {self.ts_unit!r} is not one of {', '.join(TS_UNITS)}")
        if self.ts_unit and self.ts_unit != "s" and self.ts_format:
            raise ConfigError(f"{self.table}: give a ts unit (numeric ts) or a ts format (string ts), not both")
        known = set(columns_of(self.table))
        unknown = sorted(set(self.mapping) - known)
        if unknown:
            raise ConfigError(f"{self.table}: --map names {', '.join(unknown)}, not columns of {self.table} "
                              f"(its columns: {', '.join(sorted(known))})")

    @property
    def source(self) -> str:
        """The ``source`` of this table's rejects (one slice per table and date, whatever the path)."""
        return f"{LOGS_JOB}:{self.table}"

    def settings(self) -> dict:
        """What decides the rows besides the input's content, by dotted key (recorded in the commit)."""
        s = {f"{self.table}.map.{c}": self.mapping.get(c, c) for c in columns_of(self.table)}
        s.update({f"{self.table}.ts_unit": self.ts_unit or "s", f"{self.table}.ts_format": self.ts_format,
                  f"{self.table}.where": self.where})
        return s


def detect_format(location: str) -> str:
    """The input format of ``location`` (see :class:`LogSource`), or ConfigError saying to give it."""
    if os.path.isdir(os.path.join(location, "_delta_log")):
        return "delta"
    path = location.rstrip("/")
    if os.path.isdir(path):
        exts = {os.path.splitext(f)[1].lower() for f in os.listdir(path) if not f.startswith((".", "_"))}
        found = {_EXTENSIONS[e] for e in exts if e in _EXTENSIONS}
        if len(found) == 1:
            return found.pop()
    ext = os.path.splitext(path)[1].lower()
    if ext in _EXTENSIONS:
        return _EXTENSIONS[ext]
    if "/" not in location and not os.path.exists(location):
        return "table"
    raise ConfigError(f"cannot tell the format of {location}: give --input-format "
                      f"({', '.join(INPUT_FORMATS)})")


def read_source(spark: SparkSession, src: LogSource, date: str) -> tuple[DataFrame, str]:
    """(the source's rows of the run, as read, after ``where``; the location read)."""
    location = src.location.replace("{date}", date)
    fmt = src.input_format or detect_format(location)
    if fmt not in ("table",) and "://" not in location and not any(ch in location for ch in "*?[") \
            and not os.path.exists(location):
        raise ConfigError(f"{src.table}: input {location} does not exist")
    if fmt == "table":
        df = spark.table(location)
    elif fmt == "csv":
        df = spark.read.option("header", True).csv(location)  # every column a string: validation parses
    elif fmt == "json":
        df = spark.read.json(location)
    else:
        df = spark.read.format(fmt).load(location)
    if src.where:
        df = df.where(src.where.replace("{date}", date))
    return df, location


def _column(df: DataFrame, src: LogSource, name: str, location: str) -> Column | None:
    """The source's value of canonical column ``name`` (None when it is optional and absent)."""
    given = src.mapping.get(name)
    if given is None or given in df.columns:
        col = given or name
        if col in df.columns:
            return F.col(f"`{col}`")
        if name in OPTIONAL[src.table]:
            return None
        raise ConfigError(f"{src.table}: no column {col!r} in {location} (its columns: {', '.join(df.columns)}); "
                          f"name the column holding {name} with --map {src.table}.{name}=COLUMN")
    return F.expr(given)  # a SQL expression over the source's columns


def _ts(ts: Column, src: LogSource) -> Column:
    """``ts`` as epoch seconds when a unit or format is given (null where it does not parse: the row is
    rejected as ``bad_timestamp``); as read otherwise (seconds or a UTC date string,
    :func:`sim.inputs.validation.parse_ts`)."""
    if src.ts_format:
        s = F.trim(ts.cast("string"))
        fmt = src.ts_format
        if not _ZONE_LETTERS & set(fmt.replace("'", "")):  # no zone in the pattern: the time is UTC
            s, fmt = F.concat(s, F.lit("+0000")), fmt + "Z"
        return F.unix_timestamp(s, fmt)
    factor = TS_UNITS[src.ts_unit or "s"]
    if factor == 1:
        return ts
    s = F.trim(ts.cast("string"))
    return F.when(s.rlike(r"^[+-]?\d{1,21}(\.\d*)?$"), F.floor(s.cast("double") / F.lit(factor)).cast("long"))


def canonical_rows(df: DataFrame, src: LogSource, location: str) -> DataFrame:
    """The source's rows as the canonical columns as read (strings or numbers), ``ts`` in seconds, plus
    ``raw`` (the row as read, as JSON) and ``pre_reason`` (``malformed_line`` for a JSON line Spark could
    not parse): the input of :mod:`sim.inputs.validation`."""
    cols = {n: _column(df, src, n, location) for n in columns_of(src.table)}
    source_cols = [c for c in df.columns if c != "_corrupt_record"]
    raw = F.to_json(F.struct(*[F.col(f"`{c}`") for c in source_cols]))
    pre_reason = F.lit(None).cast("string")
    if "_corrupt_record" in df.columns:
        corrupt = F.col("_corrupt_record").isNotNull()
        raw, pre_reason = F.when(corrupt, F.col("_corrupt_record")).otherwise(raw), F.when(corrupt, F.lit(MALFORMED))
    try:
        out = df.select(*[c.alias(n) for n, c in cols.items() if c is not None], raw.alias("raw"),
                        pre_reason.alias("pre_reason"))
    except AnalysisException as e:  # a --map expression over columns the source does not have
        raise ConfigError(f"{src.table}: a --map expression does not fit {location} (its columns: "
                          f"{', '.join(df.columns)}): {str(e).splitlines()[0]}") from None
    return out.withColumn("ts", _ts(F.col("ts"), src))


def content_digest(rows: DataFrame) -> tuple[int, str]:
    """(rows, a digest of their content in any order) of the canonical columns of ``rows``: what a
    commit records of its input, compared by the next run of the date."""
    data = [c for c in rows.columns if c not in ("raw", "pre_reason")]
    # A line the reader could not parse has no columns: its text is its content.
    h = F.xxhash64(*[F.col(c).cast("string") for c in data],
                   F.when(F.col("pre_reason").isNotNull(), F.col("raw")))
    r = rows.agg(F.count(F.lit(1)).alias("n"), F.sum(h.cast("decimal(38,0)")).alias("h")).first()
    return int(r["n"]), str(r["h"] or 0)


def _committed(spark: SparkSession, lakehouse: str, table: str, date: str) -> Commit | None:
    """The newest commit of this importer for ``date`` on ``table``."""
    return max((c for c in job_commits(spark, table_path(lakehouse, table), LOGS_JOB) if c.date == date),
               key=lambda c: c.version, default=None)


def import_logs(spark: SparkSession, lakehouse: str, date: str, sources: Sequence[LogSource], *,
                max_reject_ratio: float, force: bool = False, allow_empty: bool = False,
                now_ts: int | None = None) -> IngestReport:
    """Import the rows of ``date`` of each source into its canonical table (one commit per table, its
    rejects before it). A table whose commit for ``date`` records this run's settings and input is left
    as it is; one that records others is refused (:class:`ValidationError` naming each change, nothing
    written) unless ``force``; a table without accepted rows for ``date`` is refused unless
    ``allow_empty``. Returns the report of what was read and written (``notes['unchanged']``: the
    tables left as they were)."""
    started = time.time()
    date = parse_date(date).isoformat()
    tables = [s.table for s in sources]
    if not sources or len(set(tables)) != len(tables):
        raise ConfigError(f"give each of {' and/or '.join(REQUIRED)} at most once (got {tables or 'none'})")
    now_ts = int(time.time()) if now_ts is None else now_ts
    report = IngestReport(LOGS_JOB, [])
    todo, refusals, unchanged = [], [], []
    for src in sources:
        df, location = read_source(spark, src, date)
        rows = canonical_rows(df, src, location)
        n, digest = content_digest(rows)
        record = run_record(src.settings(), {src.table: {"source": location, "rows": n, "digest": digest}})
        done = _committed(spark, lakehouse, src.table, date)
        if done is not None and not force:
            changes = run_changes(spark, done.metadata, src.settings(), {}, current=record["inputs"])
            if changes == [] or (changes is None and done.metadata.get("fingerprint") == record["fingerprint"]):
                unchanged.append(src.table)
                continue
            refusals.append(f"{src.table} of {date} is committed (version {done.version}) from other "
                            f"settings or input than this run's:\n  " + "\n  ".join(changes or ["(not recorded)"]))
            continue
        todo.append((src, rows, n, record))
    if refusals:
        raise ValidationError("\n".join(refusals) + f"\nNothing was written. Re-import {date} with --force "
                              f"(then rebuild the UBT and samples from {date} with --force), or run with the "
                              f"input and settings it was imported from")
    checked: list[tuple[LogSource, CheckedInput, dict]] = []
    for src, rows, n, record in todo:
        classify = classify_behaviors if src.table == BEHAVIORS_TABLE else classify_impressions
        c = check_input(src.source, classify(rows, source=src.source, date_range=(date, date), now_ts=now_ts), n)
        checked.append((src, c, record))
    report.inputs = [c for _, c, _ in checked]
    enforce_ratios(report.inputs, max_reject_ratio)
    empty = [(src, c) for src, c, _ in checked if c.counts.accepted == 0]
    if empty and not allow_empty:
        report.release()
        raise ValidationError("; ".join(
            f"{src.table} has no rows for {date} in {src.location.replace('{date}', date)} ({c.counts.summary()})"
            for src, c in empty) + f": nothing written. Import the day's {' and '.join(s.table for s, _ in empty)} "
            f"(a ts in {date} UTC), or, if {date} genuinely had none, run with --allow-empty")
    if checked:  # one rejects commit for the tables written, before their data (sim.inputs.rejects)
        rejects = checked[0][1].rejects
        for _, c, _ in checked[1:]:
            rejects = rejects.unionByName(c.rejects)
        report.committed[REJECTS_TABLE] = write_rejects(
            spark, lakehouse, to_rejects(rejects, date), date, [src.source for src, _, _ in checked],
            n=sum(c.counts.rejected for c in report.inputs),
            fingerprint=fingerprint([r["fingerprint"] for _, _, r in checked]))
        report.written[REJECTS_TABLE] = sum(c.counts.rejected for c in report.inputs)
        report.dates[REJECTS_TABLE] = (date, date)
    for src, c, record in checked:
        to_canonical = to_behaviors if src.table == BEHAVIORS_TABLE else to_impressions
        report.committed[src.table] = write_log_table(
            to_canonical(c.accepted), lakehouse, src.table, job=LOGS_JOB, label=date,
            replace_where=f"dt = '{date}'", fp=record["fingerprint"], extra_metadata=record)
        report.written[src.table] = c.counts.accepted
        report.dates[src.table] = (date, date)
    if unchanged:
        report.notes["unchanged"] = ",".join(unchanged)
        log.info("%s %s: %s already imported from the same input and settings; left as they are", LOGS_JOB,
                 date, ", ".join(unchanged))
    report.release()
    report.seconds = time.time() - started
    return report
