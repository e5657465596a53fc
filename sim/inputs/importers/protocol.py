"""The public-data protocol of SIM / MIMN (:func:`next_behavior_impressions`; Pi et al. 2020 sec. 5.1, Pi et
al. 2019 (MIMN)): impressions from the accepted behaviors of any imported format.

Per user, accepted behaviors are ordered by (ts, item_id, category_id, behavior_type). The last
``targets_per_user`` behaviors (default 1, the papers' "predict the next behavior"), never the user's
first one, are *targets*. Each target yields two impressions at the target's ts:
- a positive (label 1): the target's item and category;
- a negative (label 0): an item drawn uniformly, seeded, from the dataset's item catalog (the distinct
  items of accepted behaviors, each with its smallest category id) among items the user never touched in
  any behavior. Up to ``max_negative_attempts`` hashed draws are tried; a target whose draws all hit
  touched items gets no negative (reported, so counts stay exact).
The behaviors table keeps every accepted behavior, targets included: downstream features of an
impression at t use only behaviors with ts < t, so a target (and anything at the same second) is never
its own history. ``impression_id`` is a positive xxhash64 of (user, ts, item, label, target rank).
``p_click`` is null (no ground truth for real data).
"""
from __future__ import annotations

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from sim.inputs.canonical import dt_of

_MAX_LONG = 0x7FFFFFFFFFFFFFFF


def _positive_hash(*cols: Column) -> Column:
    h = F.xxhash64(*cols).bitwiseAND(F.lit(_MAX_LONG))
    return F.when(h == 0, F.lit(1).cast("long")).otherwise(h)


def next_behavior_impressions(behaviors: DataFrame, *, seed: int, targets_per_user: int = 1,
                              max_negative_attempts: int = 20, broadcast_limit: int = 2_000_000) -> DataFrame:
    """Impressions of the public-data protocol (module docstring) from accepted behaviors.

    Args:
        behaviors: accepted canonical behaviors.
        seed: negative sampling seed.
        targets_per_user: last behaviors per user that become positives.
        max_negative_attempts: hashed draws per target to find an untouched item.
        broadcast_limit: candidate (user, item) pairs up to which they are broadcast to find the touched
            ones in one unshuffled pass over the behaviors.
    Returns:
        impressions (impression_id, user_id, item_id, category_id, ts, label, p_click=null, dt) plus
        ``target_rank`` (1 = the user's last behavior).
    """
    order = [F.col("ts").desc(), F.col("item_id").desc(), F.col("category_id").desc(),
             F.col("behavior_type").desc()]
    # row_number <= k + 1 lets Spark keep a per-partition top-(k+1) before the shuffle (WindowGroupLimit);
    # rank r is a target when the user has a behavior before it, i.e. more than r rows survive.
    top = behaviors.select("user_id", "item_id", "category_id", "ts",
                           F.row_number().over(Window.partitionBy("user_id").orderBy(*order)).alias("target_rank"))
    top = top.where(F.col("target_rank") <= targets_per_user + 1)
    top = top.withColumn("n_top", F.count(F.lit(1)).over(Window.partitionBy("user_id")))
    targets = (top.where((F.col("target_rank") <= targets_per_user) & (F.col("target_rank") < F.col("n_top")))
               .select("user_id", "item_id", "category_id", "ts", "target_rank"))

    catalog = behaviors.groupBy("item_id").agg(F.min("category_id").alias("category_id"))
    # A dense index over the catalog, in item-id order, so a uniform draw is one equi-join.
    catalog = catalog.select("item_id", "category_id",
                             (F.row_number().over(Window.orderBy("item_id")) - 1).alias("idx"))
    n_items = catalog.agg(F.count(F.lit(1))).first()[0]
    attempts = targets.select("user_id", "ts", "target_rank",
                              F.explode(F.sequence(F.lit(0), F.lit(max_negative_attempts - 1))).alias("attempt"))
    v = F.shiftrightunsigned(F.xxhash64(F.lit(int(seed)), F.lit("negative"), F.col("user_id"), F.col("ts"),
                                        F.col("target_rank").cast("long"), F.col("attempt").cast("long")), 11)
    attempts = attempts.withColumn("idx", F.least(F.floor(v.cast("double") / float(1 << 53) * n_items),
                                                  F.lit(max(n_items - 1, 0))).cast("long"))
    cand = attempts.join(catalog, "idx")
    pairs = cand.select("user_id", "item_id").distinct()
    if targets.count() * max_negative_attempts <= broadcast_limit:
        pairs = F.broadcast(pairs)
    touched = behaviors.select("user_id", "item_id").join(pairs, ["user_id", "item_id"], "left_semi").distinct()
    cand = cand.join(touched, ["user_id", "item_id"], "left_anti")
    first = Window.partitionBy("user_id", "ts", "target_rank").orderBy("attempt")
    negatives = (cand.withColumn("_k", F.row_number().over(first)).where(F.col("_k") == 1)
                 .select("user_id", "item_id", "category_id", "ts", "target_rank", F.lit(0).alias("label")))
    positives = targets.withColumn("label", F.lit(1))
    imps = positives.unionByName(negatives)
    impression_id = _positive_hash(F.lit("impression"), F.col("user_id"), F.col("ts"), F.col("item_id"),
                                   F.col("label").cast("long"), F.col("target_rank").cast("long"))
    return imps.select(impression_id.alias("impression_id"), "user_id", "item_id", "category_id", "ts",
                       F.col("label").cast("int").alias("label"), F.lit(None).cast("double").alias("p_click"),
                       dt_of(F.col("ts")).alias("dt"), "target_rank")
