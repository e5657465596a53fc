"""The public-data protocol of DIN / DIEN / MIMN / SIM (Pi et al. 2020 sec. 5.1, Pi et al. 2019 (MIMN),
Zhou et al. 2018-2019): impressions from the accepted behaviors of any imported format
(:func:`protocol_impressions`, settings in :class:`Protocol`).

Targets
-------
Per user, accepted behaviors are ordered by (ts, item_id, category_id, behavior_type) (distinct times
per user once :func:`sim.inputs.importers.same_time.order_same_time` has run). Two modes:

- ``every`` (the papers): each behavior after the user's first ``min_history`` ones is a target, its
  history the behaviors before it. DIEN's Amazon preprocessing, which MIMN and SIM follow, does this.
- ``last``: only the last ``targets_per_user`` behaviors (never one of the first ``min_history``), the
  "predict the next behavior" reading; the protocol of our first results, kept selectable.

Users with fewer than ``min_user_behaviors`` accepted behaviors give no target (the papers keep users
with >= 20 on Amazon; 0 = keep all). Their behaviors stay in the log.

Impressions of a target, all at the target's ts:
- a positive (label 1): the target's item and category;
- ``negatives_per_positive`` negatives (label 0), distinct items the user never touched in any behavior
  of the log (so never before the target, never the positive), drawn by seeded hashes (no driver loop):
  ``uniform``: uniformly over the item catalog (the distinct items of accepted behaviors, each with its
  smallest category id), as DIN/DIEN's Amazon scripts draw them;
  ``popularity``: over behavior occurrences, i.e. in proportion to how often the item occurs in the log
  (as DARE does), restricted to untouched items. Harder: popularity alone no longer separates the labels.
  Up to ``negatives_per_positive + max_negative_attempts - 1`` draws are tried per target; draws that hit
  a touched item or repeat an item are skipped, and a target left short of negatives is counted.

Where we differ from the papers: "never touched" is over the whole log (not only before the target), the
same for both schemes; the MIMN/SIM Amazon setup draws its one negative over review occurrences without
that exclusion (a popular item the user reviewed later could be a negative there, never here).

The behaviors table keeps every accepted behavior, targets included: features of an impression at t use
only behaviors with ts < t, so a target is never its own history. ``target_rank`` is the target's rank
from the user's end (1 = last behavior) in both modes, so the two modes give the same rows for the same
target. ``impression_id`` is a positive xxhash64 of (user, ts, item, label, target rank), with the
negative's index added for every negative after the first. ``p_click`` is null (no ground truth).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from sim.config import ConfigError
from sim.inputs.canonical import dt_of

_MAX_LONG = 0x7FFFFFFFFFFFFFFF
PROTOCOLS = ("every", "last")
NEGATIVE_SCHEMES = ("uniform", "popularity")
_KEY = ["user_id", "ts", "target_rank"]  # one target


@dataclass(frozen=True)
class Protocol:
    """Which behaviors become targets and how their negatives are drawn (module docstring)."""
    mode: str = "last"
    targets_per_user: int = 1  # ``last`` mode only
    min_history: int = 1
    negatives_per_positive: int = 1
    negatives: str = "uniform"
    min_user_behaviors: int = 0
    max_negative_attempts: int = 20

    def __post_init__(self) -> None:
        problems = []
        if self.mode not in PROTOCOLS:
            problems.append(f"protocol {self.mode!r} is not one of {', '.join(PROTOCOLS)}")
        if self.negatives not in NEGATIVE_SCHEMES:
            problems.append(f"negatives {self.negatives!r} is not one of {', '.join(NEGATIVE_SCHEMES)}")
        for name, low in (("targets_per_user", 1), ("min_history", 1), ("negatives_per_positive", 1),
                          ("min_user_behaviors", 0), ("max_negative_attempts", 1)):
            if int(getattr(self, name)) < low:
                problems.append(f"{name}={getattr(self, name)} must be >= {low}")
        if problems:
            raise ConfigError("; ".join(problems))

    def settings(self) -> dict:
        """What decides the rows (recorded with the import): ``targets_per_user`` only in ``last`` mode."""
        out = asdict(self)
        if self.mode != "last":
            out.pop("targets_per_user")
        return out


def _positive_hash(*cols: Column) -> Column:
    h = F.xxhash64(*cols).bitwiseAND(F.lit(_MAX_LONG))
    return F.when(h == 0, F.lit(1).cast("long")).otherwise(h)


def _newest_first() -> list[Column]:
    return [F.col(c).desc() for c in ("ts", "item_id", "category_id", "behavior_type")]


def protocol_targets(behaviors: DataFrame, p: Protocol) -> DataFrame:
    """The targets of ``p`` (module docstring): user_id, item_id, category_id, ts, target_rank."""
    by_user = Window.partitionBy("user_id")
    rank = F.row_number().over(by_user.orderBy(*_newest_first()))
    if p.mode == "last":
        # row_number <= k + m lets Spark keep a per-partition top-(k+m) before the shuffle
        # (WindowGroupLimit); rank r is a target when at least m rows survive after it.
        top = behaviors.select("user_id", "item_id", "category_id", "ts", rank.alias("target_rank"))
        top = top.where(F.col("target_rank") <= p.targets_per_user + p.min_history)
        top = top.withColumn("_n", F.count(F.lit(1)).over(by_user))
        targets = top.where((F.col("target_rank") <= p.targets_per_user)
                            & (F.col("target_rank") <= F.col("_n") - p.min_history))
        if p.min_user_behaviors > 0:
            targets = targets.join(users_with_at_least(behaviors, p.min_user_behaviors), "user_id", "left_semi")
    else:
        ranked = behaviors.select("user_id", "item_id", "category_id", "ts", rank.alias("target_rank"),
                                  F.count(F.lit(1)).over(by_user).alias("_n"))
        # position from the start = _n - target_rank + 1 > min_history
        targets = ranked.where((F.col("target_rank") <= F.col("_n") - p.min_history)
                               & (F.col("_n") >= p.min_user_behaviors))
    return targets.select("user_id", "item_id", "category_id", "ts", "target_rank")


def users_with_at_least(behaviors: DataFrame, n: int) -> DataFrame:
    """user_id of the users with >= ``n`` behaviors."""
    return behaviors.groupBy("user_id").count().where(F.col("count") >= n).select("user_id")


def users_below(behaviors: DataFrame, n: int) -> int:
    """How many users have fewer than ``n`` behaviors (dropped as targets by ``min_user_behaviors``)."""
    if n <= 1:
        return 0
    return behaviors.groupBy("user_id").count().where(F.col("count") < n).count()


def negative_slots(behaviors: DataFrame, scheme: str) -> tuple[DataFrame, int]:
    """(slots, number of slots): a dense index ``idx`` over the draws' outcomes, so a draw is one
    equi-join. ``uniform``: one slot per catalog item (in item-id order); ``popularity``: one slot per
    behavior occurrence (an item holds as many consecutive slots as it has behaviors)."""
    catalog = behaviors.groupBy("item_id").agg(F.min("category_id").alias("category_id"),
                                               F.count(F.lit(1)).alias("_occ"))
    weight = F.lit(1).cast("long") if scheme == "uniform" else F.col("_occ")
    catalog = catalog.withColumn("_w", weight)
    # One partition, but over the catalog (items), not the behaviors.
    upto = Window.orderBy("item_id").rowsBetween(Window.unboundedPreceding, Window.currentRow)
    catalog = catalog.withColumn("_start", F.sum("_w").over(upto) - F.col("_w"))
    n = catalog.agg(F.sum("_w")).first()[0] or 0
    if scheme == "uniform":
        slots = catalog.select(F.col("_start").alias("idx"), "item_id", "category_id")
    else:
        slots = catalog.select(F.explode(F.sequence("_start", F.col("_start") + F.col("_w") - 1)).alias("idx"),
                               "item_id", "category_id")
    return slots, int(n)


def draw_negatives(behaviors: DataFrame, targets: DataFrame, *, seed: int, k: int, scheme: str,
                   max_attempts: int, broadcast_limit: int) -> DataFrame:
    """Up to ``k`` distinct untouched items per target (module docstring): user_id, item_id,
    category_id, ts, target_rank, neg_index (0..k-1, in draw order)."""
    slots, n_slots = negative_slots(behaviors, scheme)
    draws = k + max_attempts - 1
    attempts = targets.select(*_KEY, F.explode(F.sequence(F.lit(0), F.lit(draws - 1))).alias("attempt"))
    v = F.shiftrightunsigned(F.xxhash64(F.lit(int(seed)), F.lit("negative"), F.col("user_id"), F.col("ts"),
                                        F.col("target_rank").cast("long"), F.col("attempt").cast("long")), 11)
    attempts = attempts.withColumn("idx", F.least(F.floor(v.cast("double") / float(1 << 53) * n_slots),
                                                  F.lit(max(n_slots - 1, 0))).cast("long"))
    cand = attempts.join(slots, "idx")
    pairs = behaviors.select("user_id", "item_id")
    n_targets = targets.count()
    if n_targets * draws <= broadcast_limit:
        # Few candidates (last mode): find the touched ones in one unshuffled pass over the behaviors.
        wanted = F.broadcast(cand.select("user_id", "item_id").distinct())
        pairs = pairs.join(wanted, ["user_id", "item_id"], "left_semi")
    cand = cand.join(pairs.distinct(), ["user_id", "item_id"], "left_anti")
    # The first k distinct items by attempt; an item's category is fixed by the catalog, so distinct
    # (item, category) structs are distinct items.
    drawn = cand.groupBy(*_KEY).agg(F.array_sort(F.collect_list(
        F.struct("attempt", "item_id", "category_id"))).alias("_c"))
    items = F.slice(F.array_distinct(F.transform(
        "_c", lambda x: F.struct(x["item_id"].alias("item_id"), x["category_id"].alias("category_id")))), 1, k)
    out = drawn.select(*_KEY, F.posexplode(items).alias("neg_index", "_n"))
    return out.select("user_id", F.col("_n.item_id").alias("item_id"), F.col("_n.category_id").alias("category_id"),
                      "ts", "target_rank", "neg_index")


def protocol_impressions(behaviors: DataFrame, protocol: Protocol, *, seed: int,
                         broadcast_limit: int = 2_000_000) -> DataFrame:
    """Impressions of the public-data protocol (module docstring) from accepted behaviors.

    Args:
        behaviors: accepted canonical behaviors.
        protocol: targets and negatives.
        seed: negative sampling seed.
        broadcast_limit: candidate draws up to which their (user, item) pairs are broadcast to find the
            touched ones in one unshuffled pass over the behaviors.
    Returns:
        impressions (impression_id, user_id, item_id, category_id, ts, label, p_click=null, dt) plus
        ``target_rank`` (1 = the user's last behavior).
    """
    targets = protocol_targets(behaviors, protocol)
    negatives = draw_negatives(behaviors, targets, seed=seed, k=protocol.negatives_per_positive,
                               scheme=protocol.negatives, max_attempts=protocol.max_negative_attempts,
                               broadcast_limit=broadcast_limit)
    positives = targets.withColumn("label", F.lit(1)).withColumn("neg_index", F.lit(0))
    imps = positives.unionByName(negatives.withColumn("label", F.lit(0)))
    base = [F.lit("impression"), F.col("user_id"), F.col("ts"), F.col("item_id"), F.col("label").cast("long"),
            F.col("target_rank").cast("long")]
    # The first negative keeps the id the one-negative protocol always gave it.
    impression_id = F.when(F.col("neg_index") == 0, _positive_hash(*base)).otherwise(
        _positive_hash(*base, F.col("neg_index").cast("long")))
    return imps.select(impression_id.alias("impression_id"), "user_id", "item_id", "category_id", "ts",
                       F.col("label").cast("int").alias("label"), F.lit(None).cast("double").alias("p_click"),
                       dt_of(F.col("ts")).alias("dt"), "target_rank")
