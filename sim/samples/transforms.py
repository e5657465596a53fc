"""Pure transforms of the samples job: sequences per impression, the leak guard, time-gap buckets.
"""
from __future__ import annotations

import logging

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from sim.ubt.settings import (SECONDS_PER_DAY)
from sim.ubt.transforms import in_window_rows, ts_outside_dt
from sim.ubt.dates import shift_date, window_start_ts
from sim.inputs.rejects import tag_rejects
from sim.samples.contract import (ID_MAX, JOB, SAMPLES_SCALARS_IN, SECONDS_PER_HOUR, SampleSpec, _SEQ_ARRAY,
                                  pack_ids)

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------ column functions
def time_gap_bucket(gap_seconds: Column, num_buckets: int = 64, per_octave: int = 1) -> Column:
    """Time-gap bucket of an impression-to-behavior gap (the ESU's e^t_j input).

    Bucket 0 is padding. A gap of g > 0 seconds, h = floor(g / 3600) whole hours, falls in
    ``1 + min(num_buckets - 2, floor(r * log2(1 + h)))`` with r = ``per_octave`` buckets per doubling
    of the hours (``time_gap_per_octave``). r = 1: bucket 1 is the first hour, then each bucket doubles
    the hours (1-3 h, 3-7 h, ...; 21-42 days share one). r = 4: quarter octaves (a bucket spans a
    factor 2^(1/4) = 1.19: 21-25 days, 25-30 days, ...; whole hours leave buckets 2-4 empty, the
    first hour being 4 * log2(2) = 4). Gaps beyond the last boundary share bucket
    ``num_buckets - 1`` (time mode refuses an r whose window reaches it: :func:`sim.config.pipeline.
    check_time_gaps_fit`). Log-scale because the recency that matters for interest decays roughly
    geometrically; the paper does not say how its e^t_j buckets the gap.
    """
    # floor(log2(x)) = floor(log2(floor(x))) for x >= 1, so whole hours keep it exact at the edges.
    hours = F.floor(gap_seconds.cast("long") / F.lit(SECONDS_PER_HOUR))
    if per_octave == 1:  # the expression of every table written before r existed, kept as it was
        raw = F.floor(F.log2(F.lit(1) + hours))
    else:
        # r * log2(x) is an integer only at x = 2^k (x whole), where the double can land 1 ulp low;
        # 1e-9 lifts it back without reaching the next boundary (checked against the exact integer
        # floor(log2(x^r)) hour by hour in tests/test_samples.py).
        raw = F.floor(F.lit(float(per_octave)) * F.log2(F.lit(1) + hours) + F.lit(1e-9))
    return (F.lit(1) + F.least(F.lit(num_buckets - 2), raw.cast("int"))).cast("int")


def _seq_struct(ts: Column, item: Column, cat: Column) -> Column:
    return F.struct(ts.cast("long").alias("ts"), item.cast("long").alias("item_id"),
                    cat.cast("long").alias("category_id"))


def _empty_seq() -> Column:
    return F.array().cast(_SEQ_ARRAY)


# ------------------------------------------------------------------------------ pure transforms
def _ids(arr: Column, field: str) -> Column:
    return F.transform(arr, lambda b: b[field])


def user_recent(ubt: DataFrame, n: int, safe_from_ts: int | None = None) -> DataFrame:
    """Per user: the newest ``n`` behaviors of the given UBT rows across categories, newest first, as
    aligned arrays ``r_ts``, ``r_items``, ``r_cats``; ``ubt_count`` (sum of the keys' uncapped counts);
    ``r_safe``, how many of them are at or after ``safe_from_ts`` (all when None), i.e. inside the long
    window of any impression of the day, so only the rest needs a per-impression check.

    Each category contributes a slice of at most ``n`` elements, so the work per user is bounded by
    categories x n, whatever the history length (the sort then keeps the newest ``n``).
    """
    tops = ubt.select("user_id", "count", F.transform(
        F.slice("behaviors", 1, n), lambda b: _seq_struct(b["ts"], b["item_id"], F.col("category_id")))
        .alias("top"))
    users = tops.groupBy("user_id").agg(F.sum("count").cast("long").alias("ubt_count"),
                                        F.flatten(F.collect_list("top")).alias("_all"))
    recent = F.slice(F.sort_array("_all", asc=False), 1, n)
    users = users.select("user_id", "ubt_count", recent.alias("_recent"))
    users = users.select("user_id", "ubt_count", _ids(F.col("_recent"), "ts").alias("r_ts"),
                         _ids(F.col("_recent"), "item_id").alias("r_items"),
                         _ids(F.col("_recent"), "category_id").alias("r_cats"))
    safe = (F.size("r_ts") if safe_from_ts is None
            else F.size(F.filter("r_ts", lambda x: x >= F.lit(int(safe_from_ts)))))
    return users.withColumn("r_safe", safe.cast("int"))


def user_day_behaviors(behaviors: DataFrame) -> DataFrame:
    """Per user: the given day's behaviors, newest first, as ``day`` array<struct<ts, item_id,
    category_id>> (bounded by one day of activity)."""
    return (behaviors.groupBy("user_id")
            .agg(F.sort_array(F.collect_list(_seq_struct(F.col("ts"), F.col("item_id"),
                                                         F.col("category_id"))), asc=False)
                 .alias("day")))


def _window_prefix(ts: Column, safe: Column, start: Column) -> Column:
    """How many leading elements of the newest-first ``ts`` are after ``start``, when the first
    ``safe`` are known to be: only the tail is looked at."""
    return safe + F.size(F.filter(F.slice(ts, safe + 1, F.size(ts) - safe), lambda x: x > start))


def build_sequences(impressions: DataFrame, ubt: DataFrame, day_behaviors: DataFrame,
                    first_day_behaviors: DataFrame | None, spec: SampleSpec,
                    date: str | None = None) -> DataFrame:
    """Impressions of one day with their sequences as raw aligned arrays, before padding and
    bucketing, so :func:`leak_condition` can check raw times.

    Output columns: the impression's, ``all_ts/all_items/all_cats`` (newest behaviors before t; the
    long sequence is its first ``n_long``, the short one its first ``n_short``), ``hard_ts/hard_items``
    (the candidate category's), ``long_len`` and ``d_category``.

    Args:
        impressions: impressions of day D (valid rows only).
        ubt: UBT(D-1) rows (user_id, category_id, behaviors, count, last_ts, oldest_ts): the table's
            segment rows, or one row per key (sim.ubt.aggregate_ubt, ubt_view).
        day_behaviors: behaviors of day D (any time; only those before each impression are used).
        first_day_behaviors: time mode only, behaviors of the first day UBT(D-1) holds
            (D - long_days), for the exact ``long_len`` at t.
        spec: windows, caps and buckets.
        date: D (time mode: which UBT behaviors are inside every impression's window); read from the
            impressions when omitted.
    """
    w, c = spec.windows, spec.caps
    timed = w.mode == "time"
    if timed and date is None:
        date = impressions.select(F.min("dt")).first()[0]
    # Behaviors at or after midnight of D + 1 - long_days are inside (t - long_days, t) for every t of D.
    safe_from = window_start_ts(w, date)
    if timed:  # UBT(D-1) holds D - long_days .. D-1; its oldest segment may hold older behaviors
        ubt = in_window_rows(ubt, window_start_ts(w, shift_date(date, -1)))
    users = impressions.select("user_id").distinct()
    ubt_u = ubt.join(users, "user_id", "left_semi")
    recent = user_recent(ubt_u, spec.recent_n, safe_from)
    day = user_day_behaviors(day_behaviors.join(users, "user_id", "left_semi"))
    # Hard search: only the candidate category's row, its newest K, whatever the rest of the history.
    keys = impressions.select("user_id", "category_id").distinct()
    # A key's rows (one per UBT segment) each give their newest K; the key's newest K are among them.
    cat_rows = ubt.join(keys, ["user_id", "category_id"], "left_semi").groupBy("user_id", "category_id")
    if timed:
        tops = F.flatten(F.collect_list(F.slice("behaviors", 1, c.hard_k)))
        cat_rows = cat_rows.agg(F.max("last_ts").alias("cat_last_ts"),
                                F.slice(F.sort_array(tops, asc=False), 1, c.hard_k).alias("_top"))
        cat_rows = cat_rows.select(
            "user_id", "category_id", "cat_last_ts",
            _ids(F.col("_top"), "ts").alias("h_ts"), _ids(F.col("_top"), "item_id").alias("h_items"))
        cat_rows = cat_rows.withColumn(
            "h_safe", F.size(F.filter("h_ts", lambda x: x >= F.lit(safe_from))).cast("int"))
    else:
        cat_rows = cat_rows.agg(F.max("last_ts").alias("cat_last_ts"))

    df = (impressions.join(recent, "user_id", "left").join(day, "user_id", "left")
          .join(cat_rows, ["user_id", "category_id"], "left"))
    if timed and first_day_behaviors is not None:
        first = (first_day_behaviors.join(users, "user_id", "left_semi").groupBy("user_id")
                 .agg(F.collect_list(F.col("ts").cast("long")).alias("first_day_ts")))
        df = df.join(first, "user_id", "left")
    else:
        df = df.withColumn("first_day_ts", F.array().cast("array<long>"))

    t, cand = F.col("ts"), F.col("category_id")
    empty_long = F.array().cast("array<long>")
    day_all = F.coalesce("day", _empty_seq())
    # Day-D behaviors are newest first: those before t are the last nb of them.
    nb = F.size(F.filter(day_all, lambda b: b["ts"] < t))
    before = F.slice(day_all, F.size(day_all) - nb + 1, nb)
    r_ts, r_items, r_cats = (F.coalesce(x, empty_long) for x in ("r_ts", "r_items", "r_cats"))
    r_safe = F.coalesce("r_safe", F.lit(0))
    before_c = F.filter(before, lambda b: b["category_id"] == cand)
    df = df.select(*SAMPLES_SCALARS_IN, "first_day_ts", "ubt_count", "cat_last_ts",
                   *(["h_ts", "h_items", "h_safe"] if timed else []),
                   r_ts.alias("r_ts"), r_items.alias("r_items"), r_cats.alias("r_cats"),
                   r_safe.alias("r_safe"),
                   before.alias("before"), before_c.alias("before_c"), nb.alias("nb"))

    nb, before, before_c = F.col("nb"), F.col("before"), F.col("before_c")
    rn = spec.recent_n
    if timed:
        long_start = t - F.lit(w.long_days * SECONDS_PER_DAY)
        short_start = t - F.lit(w.short_days * SECONDS_PER_DAY)
        n_all = F.least(F.lit(rn), nb + _window_prefix(F.col("r_ts"), F.col("r_safe"), long_start))
    else:
        n_all = F.least(F.lit(rn), nb + F.size("r_ts"))
    all_ts = F.slice(F.concat(_ids(before, "ts"), F.col("r_ts")), 1, n_all)
    all_items = F.slice(F.concat(_ids(before, "item_id"), F.col("r_items")), 1, n_all)
    all_cats = F.slice(F.concat(_ids(before, "category_id"), F.col("r_cats")), 1, n_all)
    df = df.select("*", all_ts.alias("all_ts"), all_items.alias("all_items"), all_cats.alias("all_cats"))
    a_ts = F.col("all_ts")
    if timed:
        n_long = F.least(F.lit(spec.long_n), F.size(a_ts))
        # Newest first, so the short window is a prefix: count it on the first short_n only.
        n_short = F.size(F.filter(F.slice(a_ts, 1, spec.short_n), lambda x: x > short_start))
        h_ts, h_items, h_safe = (F.coalesce("h_ts", empty_long), F.coalesce("h_items", empty_long),
                                 F.coalesce("h_safe", F.lit(0)))
        n_hard = F.least(F.lit(c.hard_k),
                         F.size(before_c) + _window_prefix(h_ts, h_safe, long_start))
        hard_ts = F.slice(F.concat(_ids(before_c, "ts"), h_ts), 1, n_hard)
        hard_items = F.slice(F.concat(_ids(before_c, "item_id"), h_items), 1, n_hard)
        expired_at_t = F.size(F.filter(F.coalesce("first_day_ts", empty_long), lambda x: x <= long_start))
        long_len = F.coalesce("ubt_count", F.lit(0)) - expired_at_t + nb
    else:  # count mode: short = the newest short_n, long = the long_n before them (disjoint)
        n_short = F.least(F.lit(spec.short_n), F.size(a_ts))
        n_long = F.least(F.lit(spec.long_n), F.size(a_ts) - n_short)
        in_long = F.filter(F.arrays_zip(F.slice(a_ts, n_short + 1, n_long).alias("ts"),
                                        F.slice("all_items", n_short + 1, n_long).alias("item_id"),
                                        F.slice("all_cats", n_short + 1, n_long).alias("category_id")),
                           lambda b: b["category_id"] == cand)
        in_long = F.slice(in_long, 1, c.hard_k)
        hard_ts, hard_items = _ids(in_long, "ts"), _ids(in_long, "item_id")
        long_len = F.coalesce("ubt_count", F.lit(0)) + nb
    last_in_cat = F.coalesce(F.array_max(_ids(before_c, "ts")), F.col("cat_last_ts"))
    d_category = F.when(last_in_cat.isNull(), F.lit(-1)).otherwise(
        F.floor((t - last_in_cat) / F.lit(SECONDS_PER_DAY))).cast("int")
    long_from = F.lit(1) if timed else n_short + 1
    return df.select(*SAMPLES_SCALARS_IN, "all_ts", "all_items", "all_cats",
                     n_long.cast("int").alias("n_long"), n_short.cast("int").alias("n_short"),
                     long_from.cast("int").alias("long_from"),
                     hard_ts.alias("hard_ts"), hard_items.alias("hard_items"),
                     long_len.cast("int").alias("long_len"), d_category.alias("d_category"))


def leak_condition() -> Column:
    """True for a row of :func:`build_sequences` whose sequences hold a behavior at or after its time
    (the short and long sequences are prefixes of ``all_ts``)."""
    t = F.col("ts")
    return (F.coalesce(F.array_max("all_ts") >= t, F.lit(False))
            | F.coalesce(F.array_max("hard_ts") >= t, F.lit(False)))


def id_range_condition() -> Column:
    """True for a row of :func:`build_sequences` whose sequences would hold an id that the stored int32
    cannot (outside 0..ID_MAX, :mod:`sim.formats.packing`): it must fail, never be truncated."""
    out = (F.col("category_id") < 0) | (F.col("category_id") > ID_MAX)  # the hard sequence's categories
    for arr in ("all_items", "all_cats", "hard_items"):
        out = out | F.coalesce((F.array_min(arr) < 0) | (F.array_max(arr) > ID_MAX), F.lit(False))
    return out


LEAK_MARK = "SIM_LEAK_GUARD"
ID_MARK = "SIM_ID_RANGE"


def to_samples(seqs: DataFrame, spec: SampleSpec, guard: bool = True) -> DataFrame:
    """The samples table's rows from :func:`build_sequences`: ids, categories and gap buckets of each
    sequence, at most its cap, packed (:func:`sim.samples.contract.pack_ids`), and the real lengths.
    A row whose sequences hold an id outside int32 raises an error while it is computed (``ID_MARK``),
    and with ``guard`` so does a row failing :func:`leak_condition` (so nothing gets written)."""
    t = F.col("ts")
    n_gaps, r = spec.time_gap_buckets, spec.time_gap_per_octave
    gaps_all = F.transform("all_ts", lambda x: time_gap_bucket(t - x, n_gaps, r))
    hard_gaps = F.transform("hard_ts", lambda x: time_gap_bucket(t - x, n_gaps, r))
    n_hard = F.size("hard_ts")
    d_category = F.col("d_category")
    if guard:
        d_category = F.when(leak_condition(), F.raise_error(F.concat(
            F.lit(f"{LEAK_MARK}: impression_id="), F.col("impression_id").cast("string"),
            F.lit(" at ts="), t.cast("string"),
            F.lit(" has a behavior at or after its time in a sequence")))).otherwise(d_category)
    d_category = F.when(id_range_condition(), F.raise_error(F.concat(
        F.lit(f"{ID_MARK}: impression_id="), F.col("impression_id").cast("string"),
        F.lit(f" has an item or category id outside 0..{ID_MAX} in its sequences; the samples table "
              "stores sequence ids as int32 (sim.formats.packing): remap the ids")))).otherwise(d_category)
    seqs = seqs.select("*", gaps_all.alias("_gaps"))
    out = {}
    for name, start, n in (("short", F.lit(1), F.col("n_short")), ("long", F.col("long_from"), F.col("n_long"))):
        out[f"{name}_items"] = pack_ids(F.slice("all_items", start, n))
        out[f"{name}_cats"] = pack_ids(F.slice("all_cats", start, n))
        out[f"{name}_gaps"] = pack_ids(F.slice("_gaps", start, n))
    out["hard_items"] = pack_ids(F.col("hard_items"))
    out["hard_cats"] = pack_ids(F.array_repeat(F.col("category_id"), n_hard))
    out["hard_gaps"] = pack_ids(hard_gaps)
    seq_cols = [out[f"{s}_{f}"].alias(f"{s}_{f}") for s in ("short", "hard", "long")
                for f in ("items", "cats", "gaps")]
    return seqs.select(*[F.col(c) for c in SAMPLES_SCALARS_IN], *seq_cols,
                       F.col("n_short").cast("int").alias("short_len"), n_hard.cast("int").alias("hard_len"),
                       F.col("long_len").cast("int").alias("long_len"),
                       d_category.cast("int").alias("d_category"))


def first_leak(seqs: DataFrame) -> tuple[int, int] | None:
    """(impression_id, ts) of the first impression, by time then id, whose sequences leak; None if none."""
    r = (seqs.where(leak_condition()).select("ts", "impression_id")
         .orderBy("ts", "impression_id").limit(1).collect())
    return (int(r[0].impression_id), int(r[0].ts)) if r else None


def split_impressions(impressions: DataFrame, run_date: str) -> tuple[DataFrame, DataFrame]:
    """(valid impressions, rejects dated ``run_date``): a row needs its ids, label and a time inside
    its dt date (a time outside it would read a UBT version that may hold its future)."""
    reason = (F.when(F.col("impression_id").isNull() | F.col("user_id").isNull() | F.col("item_id").isNull()
                     | F.col("category_id").isNull(), "null_id")
              .when(F.col("ts").isNull(), "bad_timestamp")
              .when(F.col("label").isNull(), "bad_label")
              .when(ts_outside_dt(), "ts_outside_dt"))
    tagged, rejects = tag_rejects(impressions, reason, JOB, run_date)
    valid = tagged.select(
        F.col("impression_id").cast("long"), F.col("user_id").cast("long"), F.col("item_id").cast("long"),
        F.col("category_id").cast("long"), F.col("ts").cast("long"), F.col("label").cast("int"),
        *[(F.col(p) if p in impressions.columns else F.lit(None)).cast("double").alias(p)
          for p in ("p_click", "p_click_short")], F.col("dt"))
    return valid, rejects


