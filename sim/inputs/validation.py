"""Validation of raw logs before anything is written: every input row is accepted or rejected with a reason.

DESIGN.md "Nothing is silently dropped": rows read = rows accepted + rows in ``rejects``. The paper's
behavior sequence B = [b1..bT] and the impressions (candidate a, label) are only as good as these rows;
a negative id, a timestamp from another day or a duplicated event would become a fake behavior in
someone's 54,000-long history.

Input contract (``raw``): one row per input line with the canonical columns as strings (or already typed
numbers), plus
- ``raw``: the original line (kept in ``rejects``; when absent it is rebuilt as JSON of the row), and
- optional ``pre_reason``: a reason the parser or an importer already found (``malformed_line`` when the
  line did not split into the expected fields, ``unknown_item`` when the item has no metadata, ...).

Each row gets the first reason that applies, in this order (:data:`REASONS`):

============================  =================================================================
``malformed_line``            the parser could not split the line into the expected fields
``null_id``                   an id column is null or blank
``bad_id``                    an id is not an integer
``negative_id``               an id is below 0
``zero_id``                   an id is 0 (0 is the padding id downstream)
``id_too_large``              an item or category id above 2**31 - 1: the samples table stores sequence
                              ids as int32 (:mod:`sim.formats.packing`); remap such ids before import
``bad_timestamp``             ``ts`` is neither epoch seconds nor ``yyyy-MM-dd[ HH:mm:ss]``, or < 0
``ts_in_future``              ``ts`` after the run's ``now``
``ts_outside_run_date``       ``dt`` of ``ts`` outside the run's date (range)
``unknown_behavior_type``     behavior type not one of :data:`sim.inputs.schema.BEHAVIOR_TYPES` (any case)
``bad_label``                 impression label other than 0/1
``bad_p_click``               an impression's ``p_click`` or ``p_click_short`` that is not a probability
(any other ``pre_reason``)    e.g. ``unknown_item``, ``bad_rating`` set by an importer
``duplicate_event``           an exact duplicate of an accepted row (the first one by ``raw`` stays)
``duplicate_impression_id``   an impression id already used by an accepted impression with other content
============================  =================================================================

Item metadata rows (:func:`classify_items`, an importer's category source) are checked for
``malformed_line``, the id reasons, ``missing_category`` (no category string) and ``duplicate_item`` (an
item id seen before; the first line by ``raw`` stays). Importers add ``bad_rating`` (a rating that is not
a number) and ``unknown_item`` (a behavior whose item has no accepted metadata row) as ``pre_reason``.

``classify_*`` return one DataFrame with a ``reason`` column (null = accepted), so a job can cache it,
count reasons in one pass, check the counts and the reject ratio *before* writing, then write both sides.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Mapping, Sequence

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from sim.inputs.rejects import VALIDATION_REASONS as REASONS  # noqa: F401  (the codes explained above)

from sim.inputs.canonical import dt_of
from sim.formats.packing import ID_MAX
from sim.inputs.schema import BEHAVIOR_TYPES

log = logging.getLogger(__name__)

MALFORMED = "malformed_line"
_INT_RE = r"^\s*[+-]?\d{1,18}\s*$"
_NUM_RE = r"^\s*[+-]?\d{1,12}(\.\d*)?\s*$"
_DATE_RE = r"^\s*\d{4}-\d{2}-\d{2}([ T]\d{2}:\d{2}(:\d{2}(\.\d+)?)?)?\s*$"
# Latest epoch second we accept at all (year 2100); beyond it a value is a unit mistake (ms, us).
_MAX_TS = 4102444800
BEHAVIOR_COLS = ("user_id", "item_id", "category_id", "behavior_type", "ts", "dt")
# Optional ground-truth probabilities of synthetic impressions (the oracle and its short-term part).
PROBABILITY_COLS = ("p_click", "p_click_short")
IMPRESSION_COLS = ("impression_id", "user_id", "item_id", "category_id", "ts", "label", *PROBABILITY_COLS,
                   "dt")


class ValidationError(RuntimeError):
    """Input that must not be written: counts that do not add up, too many rejects."""


@dataclass(frozen=True)
class ValidationCounts:
    read: int
    accepted: int
    rejected_by_reason: dict[str, int] = field(default_factory=dict)

    @property
    def rejected(self) -> int:
        return sum(self.rejected_by_reason.values())

    def summary(self) -> str:
        top = ", ".join(f"{r}={n}" for r, n in top_reasons(self.rejected_by_reason))
        return f"read={self.read} accepted={self.accepted} rejected={self.rejected}" + (f" ({top})" if top else "")


def _is_numeric(df: DataFrame, name: str) -> bool:
    return isinstance(df.schema[name].dataType, T.NumericType)


def _id_stage(df: DataFrame, name: str) -> dict[str, Column]:
    """Stage-1 columns of an id given as string or number: ``_v_`` (long or null), ``_blank_``, ``_bad_``
    (not an integer). Parsed once here; :func:`_id_problem` only reads these columns."""
    c = F.col(name)
    if _is_numeric(df, name):
        fractional = isinstance(df.schema[name].dataType, (T.FloatType, T.DoubleType, T.DecimalType))
        return {f"_v_{name}": c.cast("long"), f"_blank_{name}": c.isNull(),
                f"_bad_{name}": (c != F.floor(c)) if fractional else F.lit(False)}
    s = F.trim(c)
    ok = s.rlike(_INT_RE)
    return {f"_v_{name}": F.when(ok, s.cast("long")), f"_blank_{name}": s.isNull() | (s == ""),
            f"_bad_{name}": F.coalesce(~ok, F.lit(True))}


# Ids that end up in the samples' int32 sequences (user and impression ids stay 64-bit scalars).
SEQUENCE_IDS = ("item_id", "category_id")


def _id_problem(name: str) -> Column:
    v = F.col(f"_v_{name}")
    out = (F.when(F.col(f"_blank_{name}"), F.lit("null_id"))
           .when(F.col(f"_bad_{name}"), F.lit("bad_id"))
           .when(v < 0, F.lit("negative_id"))
           .when(v == 0, F.lit("zero_id")))
    return out.when(v > ID_MAX, F.lit("id_too_large")) if name in SEQUENCE_IDS else out


def _keep(df: DataFrame) -> list[str]:
    """Bookkeeping columns carried to :func:`_finish`."""
    return [c for c in df.columns if c in ("raw", "pre_reason") or c.startswith("_in_")]


def parse_ts(df: DataFrame, name: str = "ts") -> Column:
    """Epoch seconds (long) from a number, a numeric string (fractions truncated) or a UTC date/time
    string; null when it cannot be parsed."""
    c = F.col(name)
    if _is_numeric(df, name):
        return F.floor(c.cast("double")).cast("long")
    s = F.trim(c)
    num = F.when(s.rlike(_NUM_RE), F.floor(s.cast("double")).cast("long"))
    # Date strings are read as UTC regardless of the session time zone (explicit 'Z' suffix).
    d = F.regexp_replace(s, "T", " ")
    d = (F.when(F.length(d) == 10, F.concat(d, F.lit(" 00:00:00")))
         .when(F.length(d) == 16, F.concat(d, F.lit(":00"))).otherwise(d))
    iso = F.when(s.rlike(_DATE_RE), F.unix_timestamp(F.concat(d, F.lit("Z")).cast("timestamp")))
    return F.coalesce(num, iso)


def _ts_problem(date_range: tuple[str | None, str | None], now_ts: int) -> Column:
    """Timestamp problem from the staged ``_v_ts`` and ``_v_dt`` columns."""
    ts, dt = F.col("_v_ts"), F.col("_v_dt")
    first, last = date_range
    outside = F.lit(False)
    if first:
        outside = outside | (dt < F.lit(first))
    if last:
        outside = outside | (dt > F.lit(last))
    return (F.when(ts.isNull() | (ts < 0) | (ts >= _MAX_TS), F.lit("bad_timestamp"))
            .when(ts > F.lit(int(now_ts)), F.lit("ts_in_future"))
            .when(outside, F.lit("ts_outside_run_date")))


def _first_reason(*problems: Column) -> Column:
    return F.coalesce(*problems)


def _finish(df: DataFrame, rules: Column, data_cols: Sequence[str], dup_keys: Sequence[str],
            source: str, has_raw: bool, extra_unique: Sequence[str] = ()) -> DataFrame:
    """Apply pre_reason / rules / duplicates; attach raw for rejected rows only.

    One hash aggregate over all rows does the duplicate check in a single pass over the input (a window
    would sort every row, a join-back would read the input twice): valid rows group by their content,
    rejected rows by content, reason and raw line; each group is expanded back to its row count. Of n
    exact duplicates the first is accepted and n - 1 are ``duplicate_event``; their raw is the smallest
    and the largest raw line of the group respectively (exact unless three or more differently written
    lines hold the same event).
    """
    in_cols = [c for c in df.columns if c.startswith("_in_")]
    pre = F.col("pre_reason") if "pre_reason" in df.columns else F.lit(None).cast("string")
    reason = F.when(pre == F.lit(MALFORMED), pre).otherwise(F.coalesce(rules, pre))
    # Without a raw line the input columns are part of the content (they are the raw payload).
    keys = list(data_cols) + ([] if has_raw else in_cols)
    df = df.select(*keys, reason.alias("reason"), *(["raw"] if has_raw else []))
    if has_raw:
        grouped = df.groupBy(*keys, "reason", F.when(F.col("reason").isNotNull(), F.col("raw")).alias("_rk")).agg(
            F.count(F.lit(1)).alias("_n"), F.min("raw").alias("_raw_first"), F.max("raw").alias("_raw_last"))
    else:
        grouped = df.groupBy(*keys, "reason").agg(F.count(F.lit(1)).alias("_n"))
    rows = grouped.select("*", F.explode(F.sequence(F.lit(1).cast("long"), F.col("_n"))).alias("_i"))
    is_dup = F.col("reason").isNull() & (F.col("_i") > 1)
    rows = rows.withColumn("reason", F.when(is_dup, F.lit("duplicate_event")).otherwise(F.col("reason")))
    if has_raw:
        raw = F.when(is_dup, F.col("_raw_last")).otherwise(F.col("_raw_first"))
        rows = rows.withColumn("raw", raw)
    else:
        rows = rows.withColumn("raw", F.to_json(F.struct(*[F.col(c).alias(c[len("_in_"):]) for c in in_cols])))
    rows = rows.select(*keys, "reason", "raw")
    for key in extra_unique:
        valid = F.col("reason").isNull()
        w = Window.partitionBy(valid, F.col(key)).orderBy("raw", *[F.col(k) for k in dup_keys])
        rows = rows.withColumn("reason", F.when(valid & (F.row_number().over(w) > 1),
                                                F.lit(f"duplicate_{key}")).otherwise(F.col("reason")))
    return rows.select(*data_cols, "reason", F.when(F.col("reason").isNotNull(), F.col("raw")).alias("raw"),
                       F.lit(source).alias("source"))


def _prepare(raw: DataFrame, data_cols: Sequence[str]) -> tuple[DataFrame, bool]:
    has_raw = "raw" in raw.columns
    if not has_raw:
        # Keep the input values to rebuild the raw payload of a rejected row.
        raw = raw.select("*", *[F.col(c).alias(f"_in_{c}") for c in data_cols if c in raw.columns])
    return raw, has_raw


def classify_behaviors(raw: DataFrame, *, source: str,
                       date_range: tuple[str | None, str | None] = (None, None),
                       now_ts: int | None = None,
                       id_columns: Sequence[str] = ("user_id", "item_id", "category_id")) -> DataFrame:
    """Classify behavior rows. Returns the typed behavior columns (user_id, item_id, category_id,
    behavior_type, ts, dt) plus ``reason`` (null = accepted), ``raw`` (rejected rows only), ``source``.

    Args:
        raw: input rows (see the module docstring); ``category_id`` may be given already typed by an
            importer that joined it from metadata, then leave it out of ``id_columns``.
        source: the input's name, recorded in ``rejects``.
        date_range: inclusive (first, last) 'yyyy-MM-dd' dates the run may contain; None = open.
        now_ts: epoch seconds of "now"; later timestamps are ``ts_in_future``. Default: wall clock.
        id_columns: id columns the rules check; others are passed through as longs.
    """
    now_ts = int(time.time()) if now_ts is None else now_ts
    data_cols = ["user_id", "item_id", "category_id", "behavior_type", "ts"]
    df, has_raw = _prepare(raw, [c for c in data_cols if c in raw.columns])
    # Stage 1 parses each field once; stage 2 derives dt; stage 3 applies the rules to parsed columns.
    # (One nested expression would re-parse a field in every rule that reads it.)
    stage = {}
    for c in ("user_id", "item_id", "category_id"):
        if c in id_columns:
            stage.update(_id_stage(df, c))
        else:
            stage[f"_v_{c}"] = F.col(c).cast("long") if c in df.columns else F.lit(None).cast("long")
    stage["_v_ts"] = parse_ts(df, "ts")
    stage["_v_behavior_type"] = F.lower(F.trim(F.col("behavior_type").cast("string")))
    df = df.select(*_keep(df), *[v.alias(k) for k, v in stage.items()])
    df = df.withColumn("_v_dt", dt_of(F.col("_v_ts")))
    btype = F.col("_v_behavior_type")
    problems = [_id_problem(c) for c in ("user_id", "item_id", "category_id") if c in id_columns]
    problems.append(_ts_problem(date_range, now_ts))
    problems.append(F.when(btype.isNull() | ~btype.isin(*BEHAVIOR_TYPES), F.lit("unknown_behavior_type")))
    df = df.select(*[F.col(f"_v_{c}").alias(c) for c in BEHAVIOR_COLS],
                   _first_reason(*problems).alias("_rules"), *_keep(df))
    return _finish(df, F.col("_rules"), BEHAVIOR_COLS, ("user_id", "item_id", "category_id",
                                                          "behavior_type", "ts"), source, has_raw)


def _probability_stage(df: DataFrame, name: str) -> dict[str, Column]:
    """Typed value ``_v_<name>`` and presence ``_present_<name>`` of an optional probability column."""
    if name not in df.columns:
        return {f"_v_{name}": F.lit(None).cast("double"), f"_present_{name}": F.lit(False)}
    c = F.col(name)
    if _is_numeric(df, name):
        return {f"_v_{name}": c.cast("double"), f"_present_{name}": c.isNotNull()}
    s = F.trim(c)
    return {f"_present_{name}": s.isNotNull() & (s != ""),
            f"_v_{name}": F.when(s.rlike(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$"), s.cast("double"))}


def classify_impressions(raw: DataFrame, *, source: str,
                         date_range: tuple[str | None, str | None] = (None, None),
                         now_ts: int | None = None) -> DataFrame:
    """Classify impression rows: ids, ts, label (0/1), optional p_click in [0, 1], exact duplicates and
    reused impression ids. Returns the typed impression columns plus ``reason``, ``raw``, ``source``."""
    now_ts = int(time.time()) if now_ts is None else now_ts
    data_cols = ["impression_id", "user_id", "item_id", "category_id", "ts", "label", *PROBABILITY_COLS]
    df, has_raw = _prepare(raw, [c for c in data_cols if c in raw.columns])
    ids = ("impression_id", "user_id", "item_id", "category_id")
    stage = {}
    for c in ids:
        stage.update(_id_stage(df, c))
    stage["_v_ts"] = parse_ts(df, "ts")
    lab = F.col("label")
    if _is_numeric(df, "label"):
        stage["_v_label"] = F.when(lab.isin(0, 1), lab.cast("int"))
    else:
        stage["_v_label"] = F.when(F.trim(lab).isin("0", "1"), F.trim(lab).cast("int"))
    for name in PROBABILITY_COLS:
        stage.update(_probability_stage(df, name))
    df = df.select(*_keep(df), *[v.alias(k) for k, v in stage.items()])
    df = df.withColumn("_v_dt", dt_of(F.col("_v_ts")))
    problems = [_id_problem(c) for c in ids]
    problems.append(_ts_problem(date_range, now_ts))
    problems.append(F.when(F.col("_v_label").isNull(), F.lit("bad_label")))
    for name in PROBABILITY_COLS:
        p = F.col(f"_v_{name}")
        problems.append(F.when(F.col(f"_present_{name}") & (p.isNull() | F.isnan(p) | (p < 0) | (p > 1)),
                               F.lit("bad_p_click")))
    df = df.select(*[F.col(f"_v_{c}").alias(c) for c in IMPRESSION_COLS],
                   _first_reason(*problems).alias("_rules"), *_keep(df))
    return _finish(df, F.col("_rules"), IMPRESSION_COLS,
                   ("impression_id", "user_id", "item_id", "category_id", "ts", "label"), source, has_raw,
                   extra_unique=("impression_id",))


def split(classified: DataFrame) -> tuple[DataFrame, DataFrame]:
    """(accepted rows without bookkeeping columns, rejects as (source, reason, raw))."""
    data = [c for c in classified.columns if c not in ("reason", "raw", "source")]
    accepted = classified.where(F.col("reason").isNull()).select(*data)
    rejects = classified.where(F.col("reason").isNotNull()).select("source", "reason", "raw")
    return accepted, rejects


def validate_behaviors(raw: DataFrame, **kwargs) -> tuple[DataFrame, DataFrame]:
    """(accepted behaviors, rejects); keyword arguments as :func:`classify_behaviors`."""
    return split(classify_behaviors(raw, **kwargs))


def validate_impressions(raw: DataFrame, **kwargs) -> tuple[DataFrame, DataFrame]:
    """(accepted impressions, rejects); keyword arguments as :func:`classify_impressions`."""
    return split(classify_impressions(raw, **kwargs))


def reason_counts(classified_or_rejects: DataFrame) -> dict[str | None, int]:
    """{reason: rows} in one pass; the key None counts accepted rows of a classified DataFrame."""
    rows = classified_or_rejects.groupBy("reason").count().collect()
    return {r["reason"]: int(r["count"]) for r in rows}


def counts_of(read: int, by_reason: Mapping[str | None, int]) -> ValidationCounts:
    return ValidationCounts(read=int(read), accepted=int(by_reason.get(None, 0)),
                            rejected_by_reason={k: int(v) for k, v in by_reason.items() if k is not None})


def check_counts(read: int, accepted: int, rejected: int, what: str = "rows") -> None:
    """Raise :class:`ValidationError` unless read = accepted + rejected."""
    if int(read) != int(accepted) + int(rejected):
        raise ValidationError(f"{what}: read {read} != accepted {accepted} + rejected {rejected} "
                              f"(difference {int(read) - int(accepted) - int(rejected)}); rows were lost "
                              f"or duplicated between input and output")


def top_reasons(by_reason: Mapping[str | None, int], n: int = 3) -> list[tuple[str, int]]:
    items = [(r, int(c)) for r, c in by_reason.items() if r is not None and c]
    return sorted(items, key=lambda rc: (-rc[1], rc[0]))[:n]


def enforce_reject_ratio(by_reason: Mapping[str | None, int] | DataFrame, read: int,
                         max_ratio: float, what: str = "input") -> float:
    """Raise :class:`ValidationError` naming the top reasons when rejected / read > ``max_ratio``.

    Args:
        by_reason: {reason: count} (None = accepted, ignored) or a rejects DataFrame with ``reason``.
        read: rows read.
        max_ratio: config ``validation.max_reject_ratio``.
    Returns:
        The reject ratio.
    """
    if isinstance(by_reason, DataFrame):
        by_reason = reason_counts(by_reason)
    rejected = sum(c for r, c in by_reason.items() if r is not None)
    ratio = rejected / read if read else 0.0
    if ratio > max_ratio:
        top = ", ".join(f"{r} ({c} rows)" for r, c in top_reasons(by_reason))
        raise ValidationError(f"{what}: {rejected} of {read} rows rejected ({ratio:.1%}) exceeds "
                              f"validation.max_reject_ratio={max_ratio:g}; top reasons: {top}")
    return ratio


def classify_items(raw: DataFrame, *, source: str) -> DataFrame:
    """Classify item metadata rows: ``item_id`` (string or long), ``category`` (the category name).

    Returns item_id (long), category (trimmed string), ``reason``, ``raw``, ``source``; one accepted row
    per item id.
    """
    df, has_raw = _prepare(raw, [c for c in ("item_id", "category") if c in raw.columns])
    df = df.select(*_keep(df), *[v.alias(k) for k, v in _id_stage(df, "item_id").items()],
                   F.trim(F.col("category").cast("string")).alias("_v_category"))
    category = F.col("_v_category")
    missing = F.when(category.isNull() | (category == ""), F.lit("missing_category"))
    df = df.select(F.col("_v_item_id").alias("item_id"), category.alias("category"),
                   F.coalesce(_id_problem("item_id"), missing).alias("_rules"), *_keep(df))
    out = _finish(df, F.col("_rules"), ("item_id", "category"), ("item_id", "category"), source, has_raw,
                  extra_unique=("item_id",))
    # Two lines of one item with the same category are an item duplicate too, not an event duplicate.
    return out.withColumn("reason", F.when(F.col("reason") == "duplicate_event", F.lit("duplicate_item"))
                          .when(F.col("reason") == "duplicate_item_id", F.lit("duplicate_item"))
                          .otherwise(F.col("reason")))
