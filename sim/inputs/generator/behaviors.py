"""Users and their lifelong behaviors: interests, revisits, bursts, topics across categories.
"""
from __future__ import annotations

import math

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from sim.inputs.canonical import dt_of
from sim.inputs.generator.settings import (DAY, GeneratorConfig, _INTEREST_SKEW, _RECENT_BURST_LEAD_DAYS,
                                           _SESSION_SECONDS, _TYPE_CUTS, _ZIPF_CATEGORY, _ZIPF_ITEM)


# Hash-based randomness -----------------------------------------------------------------------------
def _u(seed: int, tag: str, *parts: Column) -> Column:
    """Uniform [0, 1) from (seed, tag, parts); parts are cast to long so every call site hashes alike."""
    h = F.xxhash64(F.lit(int(seed)), F.lit(tag), *[p.cast("long") for p in parts])
    return F.shiftrightunsigned(h, 11).cast("double") / float(1 << 53)


def _floor_mul(v: Column, n) -> Column:
    n = n if isinstance(n, Column) else F.lit(n)
    return F.least(F.floor(v * n), n - 1).cast("long")


def _popular_category(gc: GeneratorConfig, v: Column) -> Column:
    return (_floor_mul(F.pow(v, _ZIPF_CATEGORY), gc.categories) + 1).cast("long")


def _item_in_category(gc: GeneratorConfig, category: Column, rank: Column) -> Column:
    return (category + F.lit(gc.categories) * rank).cast("long")


def _popular_item(gc: GeneratorConfig, category: Column, v: Column) -> Column:
    return _item_in_category(gc, category, _floor_mul(F.pow(v, _ZIPF_ITEM), gc.items_per_category))


def _favorite_item(gc: GeneratorConfig, user: Column, category: Column, f: Column) -> Column:
    v = _u(gc.seed, "fav", user, category, f)
    return _item_in_category(gc, category, _floor_mul(F.pow(v, 2.0), gc.items_per_category))


# Styles (``styles_per_category`` S > 0): a hidden property of the item id, like topics ------------
def style_of(gc: GeneratorConfig, item: Column) -> Column:
    """The style of an item: its popularity rank inside its category mod S (item = c + C * rank)."""
    return (F.floor((item - 1) / F.lit(gc.categories)) % F.lit(gc.styles_per_category)).cast("long")


def _rank_with_style(gc: GeneratorConfig, rank: Column, style: Column) -> Column:
    """The rank of ``style`` in the block of S ranks holding ``rank`` (the block before it when the
    catalog's last block is partial), so a styled pick keeps about the popularity of the draw."""
    s, m = F.lit(gc.styles_per_category), F.lit(gc.items_per_category)
    styled = rank - rank % s + style
    return F.when(styled >= m, styled - s).otherwise(styled).cast("long")


def _interest_style(gc: GeneratorConfig, user: Column, k: Column) -> Column:
    """sigma_k, the style lasting interest k holds (in every category of its topic)."""
    return _floor_mul(_u(gc.seed, "istyle", user, k), gc.styles_per_category)


def _item_of_style(gc: GeneratorConfig, user: Column, category: Column, style: Column, favorite: Column,
                   f: Column, pop: Column) -> Column:
    """An item of ``style`` in ``category``: with ``favorite`` one of the user's favorites of that style
    (the ``f``-th share of them), or, when none has it or without ``favorite``, the popular item of draw
    ``pop`` moved to that style."""
    fs = F.sequence(F.lit(0).cast("long"), F.lit(gc.favorites_per_category - 1).cast("long"))
    favorites = F.filter(F.transform(fs, lambda i: _favorite_item(gc, user, category, i)),
                         lambda it: style_of(gc, it) == style)
    n = F.size(favorites)
    # try_: the index is valid wherever n > 0 selects it, even if Spark evaluates the branch eagerly.
    rank = _floor_mul(F.pow(pop, _ZIPF_ITEM), gc.items_per_category)
    popular = _item_in_category(gc, category, _rank_with_style(gc, rank, style))
    return F.when(favorite & (n > 0), F.try_element_at(favorites, (_floor_mul(f, n) + 1).cast("int"))) \
        .otherwise(popular).cast("long")


def topic_of(gc: GeneratorConfig, category: Column) -> Column:
    """The latent topic of a category: every ``topics``-th category shares one."""
    return ((category - 1) % F.lit(gc.topics) + 1).cast("long")


def _category_in_topic(gc: GeneratorConfig, topic: Column, v: Column) -> Column:
    """Category number floor(n * v) of the n categories of ``topic`` (topic, topic + T, ...)."""
    n = F.floor((F.lit(gc.categories) - topic) / F.lit(gc.topics)) + 1
    return (topic + F.lit(gc.topics) * _floor_mul(v, n)).cast("long")


def _interest_topic(gc: GeneratorConfig, user: Column, k: Column) -> Column:
    """tau_k, the topic of long-term interest k: a popular topic."""
    return (_floor_mul(F.pow(_u(gc.seed, "itopic", user, k), _ZIPF_CATEGORY), gc.topics) + 1).cast("long")


def _home_category(gc: GeneratorConfig, user: Column, k: Column, topic: Column | None = None) -> Column:
    """h_k, the home category of interest k inside its topic (the topic's first categories first)."""
    topic = _interest_topic(gc, user, k) if topic is None else topic
    return _category_in_topic(gc, topic, F.pow(_u(gc.seed, "ihome", user, k), _ZIPF_CATEGORY))


def _interest_category(gc: GeneratorConfig, topic: Column, home: Column, cross: Column, pick: Column) -> Column:
    """The category of one visit (or long-term candidate) of an interest: any category of its topic
    when the draw ``cross`` < cross_category_share, else its home category."""
    return F.when(cross < gc.cross_category_share, _category_in_topic(gc, topic, pick)).otherwise(home)


def _interest_weight(k: Column) -> Column:
    e = 1.0 / _INTEREST_SKEW
    return F.pow(k.cast("double") + 1, e) - F.pow(k.cast("double"), e)


def _burst_category(gc: GeneratorConfig, user: Column, b: Column) -> Column:
    return _popular_category(gc, _u(gc.seed, "bcat", user, b))


def _burst_start_day(gc: GeneratorConfig, user: Column, b: Column) -> Column:
    """Burst 0 starts in the 10 days before the impression window or inside it; others anywhere before."""
    v = _u(gc.seed, "bstart", user, b)
    recent_first = gc.history_days - gc.impression_days - _RECENT_BURST_LEAD_DAYS
    recent_span = _RECENT_BURST_LEAD_DAYS + gc.impression_days
    return F.when(b == 0, F.lit(recent_first) + _floor_mul(v, recent_span)) \
        .otherwise(_floor_mul(v, recent_first)).cast("long")


# Users ---------------------------------------------------------------------------------------------
def user_profiles(spark: SparkSession, gc: GeneratorConfig) -> DataFrame:
    """One row per user: user_id (1..users), n_behaviors, n_interests, n_bursts."""
    parts = gc.partitions or max(2, math.ceil(gc.users * gc.mean_behaviors_per_user / 500_000))
    xm = gc.pareto_scale()
    v = _u(gc.seed, "n", F.col("id"))
    pareto = F.floor(F.lit(xm) / F.pow(F.lit(1.0) - v, 1.0 / gc.tail_index))
    n = F.least(F.greatest(pareto, F.lit(gc.min_behaviors_per_user)), F.lit(gc.max_behaviors_per_user))
    n = F.when(F.col("id") <= gc.heavy_users, F.lit(gc.max_behaviors_per_user)).otherwise(n).cast("long")
    users = spark.range(1, gc.users + 1, 1, parts).select(F.col("id").alias("user_id"), n.alias("n_behaviors"))
    interests = F.lit(gc.interests_min) + F.floor(F.log2(F.lit(1.0) + F.col("n_behaviors") / 100.0))
    bursts = F.greatest(F.lit(1), F.round(F.col("n_behaviors") * gc.share_burst / gc.burst_size))
    return users.select("user_id", "n_behaviors",
                        F.least(interests, F.lit(gc.interests_max)).cast("long").alias("n_interests"),
                        bursts.cast("long").alias("n_bursts"))


# Behaviors -----------------------------------------------------------------------------------------
def generate_behaviors(users: DataFrame, gc: GeneratorConfig) -> DataFrame:
    """Behaviors (user_id, item_id, category_id, behavior_type, ts, dt) of :func:`user_profiles`."""
    u, seed = F.col("user_id"), gc.seed
    c_ = F.col
    df = users.select("user_id", "n_interests", "n_bursts",
                      F.explode(F.sequence(F.lit(0).cast("long"), F.col("n_behaviors") - 1)).alias("j"))
    r = lambda tag: _u(seed, tag, u, c_("j"))  # noqa: E731 - a per-behavior draw
    # Intermediate columns are named one step at a time: a single nested expression would repeat each
    # sub-expression (k inside period inside phase ...) and blow up code generation.
    df = df.select("user_id", "j", "n_interests", "n_bursts", r("src").alias("src"),
                   _floor_mul(F.pow(r("k"), _INTEREST_SKEW), c_("n_interests")).alias("k"),
                   _floor_mul(r("b"), c_("n_bursts")).alias("b"))
    is_long = c_("src") < gc.share_long_term
    is_burst = ~is_long & (c_("src") < gc.share_long_term + gc.share_burst)
    # 1. long-term interest k, revisited every `period` days from `phase`, in 2-hour sessions
    df = df.withColumn("period", F.lit(gc.revisit_min_days) + _floor_mul(
        _u(seed, "period", u, c_("k")), gc.revisit_max_days - gc.revisit_min_days + 1))
    # The first visit falls inside the history even when a period is longer than the history.
    df = df.withColumn("phase", _floor_mul(_u(seed, "phase", u, c_("k")),
                                           F.least(c_("period"), F.lit(gc.history_days))))
    df = df.withColumn("s", _floor_mul(r("session"), F.floor((F.lit(gc.history_days - 1) - c_("phase"))
                                                                / c_("period")) + 1))
    # A visit (session s of interest k) goes to one category of the interest's topic.
    df = df.withColumn("topic_k", _interest_topic(gc, u, c_("k")))
    df = df.withColumn("home_k", _home_category(gc, u, c_("k"), c_("topic_k")))
    df = df.withColumn("visit_cat", _interest_category(gc, c_("topic_k"), c_("home_k"),
                                                       _u(seed, "vcross", u, c_("k"), c_("s")),
                                                       _u(seed, "vcat", u, c_("k"), c_("s"))))
    long_sec = ((c_("phase") + c_("s") * c_("period")) * DAY + F.lit(8 * 3600)
                + _floor_mul(_u(seed, "hour", u, c_("k"), c_("s")), 14 * 3600)
                + _floor_mul(r("offset"), _SESSION_SECONDS))
    # 2. burst b: 1-3 days of one category
    duration = 1 + _floor_mul(_u(seed, "bdur", u, c_("b")), 3)
    burst_sec = F.least(_burst_start_day(gc, u, c_("b")) * DAY + _floor_mul(r("bt"), duration * DAY),
                        F.lit(gc.history_days * DAY - 1))
    # 3. noise
    noise_sec = _floor_mul(r("nt"), gc.history_days * DAY)
    category = (F.when(is_long, c_("visit_cat"))
                .when(is_burst, _burst_category(gc, u, c_("b")))
                .otherwise(_popular_category(gc, r("ncat"))))
    sec = F.when(is_long, long_sec).when(is_burst, burst_sec).otherwise(noise_sec)
    p_repeat = (F.when(is_long, F.lit(gc.repeat_prob)).when(is_burst, F.lit(gc.repeat_prob / 2))
                .otherwise(F.lit(0.0)))
    styled = []
    if gc.styles_per_category:  # a lasting interest's behavior is of its style with prob style_focus
        styled = [(is_long & (r("sfocus") < gc.style_focus)).alias("styled"),
                  _interest_style(gc, u, c_("k")).alias("style_k")]
    df = df.select("user_id", "j", category.cast("long").alias("category_id"), sec.alias("sec"),
                   p_repeat.alias("p_repeat"), *styled)
    c = c_("category_id")
    fav = _favorite_item(gc, u, c, _floor_mul(r("f"), gc.favorites_per_category))
    item = F.when(r("repeat") < c_("p_repeat"), fav).otherwise(_popular_item(gc, c, r("pop")))
    if styled:
        item = F.when(c_("styled"), _item_of_style(gc, u, c, c_("style_k"), r("repeat") < c_("p_repeat"),
                                                   r("f"), r("pop"))).otherwise(item)
    t = r("type")
    btype = F.when(t < _TYPE_CUTS[0][0], _TYPE_CUTS[0][1])
    for cut, name in _TYPE_CUTS[1:]:
        btype = btype.when(t < cut, name)
    btype = btype.otherwise("buy")
    df = df.select("user_id", item.alias("item_id"), "category_id", btype.alias("behavior_type"),
                   (F.lit(gc.start_ts) + c_("sec")).cast("long").alias("ts"))
    return df.withColumn("dt", dt_of(c_("ts")))

