"""The samples the obvious way: a point-in-time range join of impressions to raw behaviors, no UBT.

This is what a Spark user writes first for SIM's training samples (section 5.2 builds them from the
User Behavior Tree instead): join every impression to its user's behaviors with ``ts`` in the
impression's window and before its time, collect them, sort them newest first, slice the sequences.
It is kept as a reference implementation, not used by the pipeline: the test
(tests/test_samples_join.py) checks that :func:`sim.samples.job.build_samples` gives exactly its rows,
and bench/bench_samples_join.py times the two on the same data.

Cost. Each impression's group holds every behavior of its user in the window, so the join produces
impressions-per-user x behaviors-per-user rows per user and the work follows the users' history
lengths, where :func:`sim.samples.transforms.build_sequences` reads per user a per-category slice of
the UBT bounded by the caps and, per impression, only the day's behaviors.

Same semantics as :func:`~sim.samples.transforms.build_sequences` + :func:`~sim.samples.transforms.to_samples`
(the latter is reused as is: padding, time-gap buckets, column order and the leak guard are the
contract's, written once):

- time mode: the long window is (t - long_days, t) and the short one (t - short_days, t), both open;
  long = its newest ``long_cap``, short = the behaviors of the short window among its newest
  ``short_cap``, hard = the candidate category's behaviors of the long window, newest ``hard_k``;
  ``long_len`` = all behaviors of the long window. The join reaches back to midnight of
  D - long_days, not only to t - long_days, because ``d_category`` in the job is computed from
  UBT(D-1), which holds whole days: a behavior of that first day older than t - long_days is outside
  every sequence but still counts as "the last behavior in the category" (d_category = long_days).
- count mode: every behavior before t (the whole history); short = the newest ``short_count``,
  long = the ``long_count`` before them, hard = the candidate's category within the long part,
  ``long_len`` = all behaviors before t, ``d_category`` over the whole history.
- newest first means by (ts, item_id, category_id) descending, as in the job.

Where the rows can differ from the job's (none of these occurs in clean data or the benchmark):

- behaviors the UBT job rejects (a missing id or time, or a ``ts`` outside its ``dt`` date) are left
  out here; the job drops them from UBT(D-1) too but reads the day-D partition with only the
  missing-key filter, so a day-D row whose ``ts`` lies before D would be in its sequences.
- ``caps.ubt_category_cap`` (off by default) truncates the index per (user, category) in time mode;
  the join has no index and so no such cap.
- two identical impression rows (all scalar columns equal) are one group here, two rows in the job.
"""
from __future__ import annotations

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from sim.samples.contract import SAMPLES_SCALARS_IN, SampleSpec
from sim.samples.transforms import _ids, _seq_struct, to_samples
from sim.ubt.settings import SECONDS_PER_DAY
from sim.ubt.transforms import reject_reason


def _joined_history(impressions: DataFrame, behaviors: DataFrame, spec: SampleSpec) -> DataFrame:
    """Impressions with ``hist``: their user's behaviors before t (in time mode from midnight of
    D - long_days on), newest first, as array<struct<ts, item_id, category_id>>."""
    i, b = impressions.alias("i"), behaviors.alias("b")
    t = F.col("i.ts")
    cond = (F.col("i.user_id") == F.col("b.user_id")) & (F.col("b.ts") < t)
    if spec.windows.mode == "time":
        first_day = (F.floor(t / F.lit(SECONDS_PER_DAY)) - F.lit(spec.windows.long_days)) * SECONDS_PER_DAY
        cond = cond & (F.col("b.ts") >= first_day)
    # Left join: an impression without history still gets its (empty) row.
    joined = i.join(b, cond, "left")
    hit = F.when(F.col("b.ts").isNotNull(),
                 _seq_struct(F.col("b.ts"), F.col("b.item_id"), F.col("b.category_id")))
    return (joined.groupBy(*[F.col(f"i.{c}") for c in SAMPLES_SCALARS_IN])
            .agg(F.sort_array(F.collect_list(hit), asc=False).alias("hist")))


def _last_in_category(hist: Column, cand: Column, t: Column) -> Column:
    """Days since the newest behavior of ``hist`` in category ``cand`` (-1 if none)."""
    last = F.array_max(_ids(F.filter(hist, lambda x: x["category_id"] == cand), "ts"))
    return (F.when(last.isNull(), F.lit(-1))
            .otherwise(F.floor((t - last) / F.lit(SECONDS_PER_DAY))).cast("int"))


def join_sequences(impressions: DataFrame, behaviors: DataFrame, spec: SampleSpec) -> DataFrame:
    """The columns :func:`~sim.samples.transforms.build_sequences` gives (``all_*``, ``n_long``,
    ``n_short``, ``long_from``, ``hard_ts/hard_items``, ``long_len``, ``d_category``), by the join.

    Args:
        impressions: valid impressions (:func:`~sim.samples.transforms.split_impressions`) of any
            dates: each is joined to its own window.
        behaviors: the raw behaviors table (all dates; rows the UBT job would reject are dropped).
        spec: windows, caps and buckets.
    """
    w, c = spec.windows, spec.caps
    behaviors = behaviors.where(reject_reason(behaviors).isNull())
    df = _joined_history(impressions, behaviors, spec)
    t, cand, hist = F.col("ts"), F.col("category_id"), F.col("hist")
    rn = spec.recent_n
    if w.mode == "time":
        long_start = t - F.lit(w.long_days * SECONDS_PER_DAY)
        short_start = t - F.lit(w.short_days * SECONDS_PER_DAY)
        window = F.filter(hist, lambda x: x["ts"] > long_start)
        all_b = F.slice(window, 1, rn)
        hard = F.slice(F.filter(window, lambda x: x["category_id"] == cand), 1, c.hard_k)
        n_long = F.least(F.lit(spec.long_n), F.size(all_b))
        n_short = F.size(F.filter(F.slice(_ids(all_b, "ts"), 1, spec.short_n), lambda x: x > short_start))
        long_from, long_len = F.lit(1), F.size(window)
    else:
        all_b = F.slice(hist, 1, rn)
        n_short = F.least(F.lit(spec.short_n), F.size(all_b))
        n_long = F.least(F.lit(spec.long_n), F.size(all_b) - n_short)
        hard = F.slice(F.filter(F.slice(all_b, n_short + 1, n_long), lambda x: x["category_id"] == cand),
                       1, c.hard_k)
        long_from, long_len = n_short + 1, F.size(hist)
    return df.select(*SAMPLES_SCALARS_IN,
                     _ids(all_b, "ts").alias("all_ts"), _ids(all_b, "item_id").alias("all_items"),
                     _ids(all_b, "category_id").alias("all_cats"),
                     n_long.cast("int").alias("n_long"), n_short.cast("int").alias("n_short"),
                     long_from.cast("int").alias("long_from"),
                     _ids(hard, "ts").alias("hard_ts"), _ids(hard, "item_id").alias("hard_items"),
                     long_len.cast("int").alias("long_len"),
                     _last_in_category(hist, cand, t).alias("d_category"))


def join_samples(impressions: DataFrame, behaviors: DataFrame, spec: SampleSpec,
                 guard: bool = True) -> DataFrame:
    """Rows of the samples contract (SAMPLES_COLUMNS) for ``impressions`` by the range join."""
    return to_samples(join_sequences(impressions, behaviors, spec), spec, guard=guard)
