"""Impressions and their ground-truth clicks (the stored oracle probabilities).
"""
from __future__ import annotations


from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from sim.inputs.canonical import dt_of
from sim.inputs.generator.settings import DAY, GeneratorConfig, LONG_WINDOW_DAYS, _STYLE_MATCH_SHARE
from sim.inputs.generator.behaviors import (_burst_category, _favorite_item, _floor_mul, _home_category,
                                            _interest_category, _interest_style, _interest_topic,
                                            _interest_weight, _item_of_style, _popular_category, _popular_item,
                                            _u, style_of, topic_of)


# Impressions ---------------------------------------------------------------------------------------
def impression_candidates(users: DataFrame, gc: GeneratorConfig) -> DataFrame:
    """Shown candidates (impression_id, user_id, item_id, category_id, ts, dt) on the impression days."""
    u, seed = F.col("user_id"), gc.seed
    per_user = gc.impression_days * gc.impressions_per_user_day
    df = users.select("user_id", "n_interests", "n_bursts",
                      F.explode(F.sequence(F.lit(0).cast("long"), F.lit(per_user - 1).cast("long"))).alias("m"))
    m = F.col("m")
    r = lambda tag: _u(seed, tag, u, m)  # noqa: E731
    day = F.lit(gc.history_days - gc.impression_days) + F.floor(m / gc.impressions_per_user_day)
    ts = F.lit(gc.start_ts) + day * DAY + _floor_mul(r("t"), DAY)
    src = r("csrc")
    k = _floor_mul(r("ck"), F.col("n_interests"))
    old_burst = _floor_mul(r("cb"), F.col("n_bursts"))
    df = df.select("user_id", "m", "n_bursts", src.alias("src"), ts.cast("long").alias("ts"),
                   _interest_topic(gc, u, k).alias("topic_k"), k.alias("k"))
    df = df.withColumn("home_k", _home_category(gc, u, F.col("k"), F.col("topic_k")))
    cat = (F.when(F.col("src") < 0.35, _interest_category(gc, F.col("topic_k"), F.col("home_k"), r("ccross"),
                                                          r("cpick")))
           .when(F.col("src") < 0.60, _burst_category(gc, u, F.lit(0)))
           .when(F.col("src") < 0.70, _burst_category(gc, u, old_burst))
           .otherwise(_popular_category(gc, r("ccat"))))
    s = gc.styles_per_category
    styled = []
    if s:  # a long-term candidate has the interest's style about half the time, else another style
        sigma = _interest_style(gc, u, F.col("k"))
        other = (sigma + 1 + _floor_mul(r("cother"), max(s - 1, 1))) % F.lit(s)  # = sigma when S = 1
        styled = [(F.col("src") < 0.35).alias("_styled"),
                  F.when(r("cstyle") < _STYLE_MATCH_SHARE, sigma).otherwise(other).alias("_style")]
    df = df.select("user_id", "m", "ts", cat.alias("category_id"),
                   ((F.col("src") < 0.35) & (r("cfav") < 0.3)).alias("_as_fav"), *styled)
    c = F.col("category_id")
    item = F.when(F.col("_as_fav"), _favorite_item(gc, u, c, _floor_mul(r("cf"), gc.favorites_per_category))) \
        .otherwise(_popular_item(gc, c, r("cpop")))
    if styled:
        item = F.when(F.col("_styled"), _item_of_style(gc, u, c, F.col("_style"), F.col("_as_fav"), r("cf"),
                                                       r("cpop"))).otherwise(item)
    impression_id = (u - 1) * per_user + m + 1
    return df.select(impression_id.cast("long").alias("impression_id"), "user_id", item.alias("item_id"),
                     c.cast("long").alias("category_id"), "ts", dt_of(F.col("ts")).alias("dt"))


def _max_over_interests(gc: GeneratorConfig, user: Column, category: Column, n_interests: Column,
                        same_category: Column, same_topic: Column, style: Column | None = None) -> Column:
    """max_k w_k * [(1 - x) * 1{c = h_k} * same_category + x * 1{topic(c) = tau_k} * same_topic],
    each term times 1{style = sigma_k} when a candidate's ``style`` is given."""
    x = gc.cross_category_share
    ks = F.sequence(F.lit(0).cast("long"), n_interests - 1)
    topic = topic_of(gc, category)

    def term(k: Column) -> Column:
        tau = _interest_topic(gc, user, k)
        home = F.when(_home_category(gc, user, k, tau) == category, same_category).otherwise(F.lit(0.0))
        other = F.when(tau == topic, same_topic).otherwise(F.lit(0.0))
        out = _interest_weight(k) * (F.lit(1.0 - x) * home + F.lit(x) * other)
        return out if style is None else F.when(_interest_style(gc, user, k) == style, out).otherwise(F.lit(0.0))

    return F.aggregate(ks, F.lit(0.0), lambda acc, k: F.greatest(acc, term(k)))


def long_term_affinity(gc: GeneratorConfig, user: Column, category: Column, n_interests: Column) -> Column:
    """a(u, c) = max_k w_k * [(1 - x) * 1{c = h_k} + x * 1{topic(c) = tau_k}] (0 without an interest)."""
    return _max_over_interests(gc, user, category, n_interests, F.lit(1.0), F.lit(1.0))


def is_favorite(gc: GeneratorConfig, user: Column, category: Column, item: Column) -> Column:
    fs = F.sequence(F.lit(0).cast("long"), F.lit(gc.favorites_per_category - 1).cast("long"))
    return F.exists(fs, lambda f: _favorite_item(gc, user, category, f) == item)


def _sigmoid(logit: Column) -> Column:
    return F.lit(1.0) / (F.lit(1.0) + F.exp(-logit))


def click_truth(candidates: DataFrame, users: DataFrame, behaviors: DataFrame, gc: GeneratorConfig) -> DataFrame:
    """Impressions with ``p_click`` from the hidden model, a label drawn from it, and ``p_click_short``.

    Point-in-time: the features of an impression at t come from the user's behaviors with ts < t.
    """
    tc = gc.truth
    styles = bool(gc.styles_per_category)
    b_style = [style_of(gc, F.col("item_id")).alias("b_style")] if styles else []
    k_style = [style_of(gc, F.col("item_id")).alias("k_style")] if styles else []
    b = behaviors.select(F.col("user_id").alias("b_user"), F.col("category_id").alias("b_cat"),
                         topic_of(gc, F.col("category_id")).alias("b_topic"), F.col("ts").alias("b_ts"), *b_style)
    keys = candidates.select(F.col("impression_id").alias("k_id"), F.col("user_id").alias("k_user"),
                             F.col("category_id").alias("k_cat"),
                             topic_of(gc, F.col("category_id")).alias("k_topic"), F.col("ts").alias("k_ts"), *k_style)
    # Impressions are few next to behaviors: broadcast them and stream the behaviors once, unshuffled.
    hits = b.join(F.broadcast(keys), (F.col("b_user") == F.col("k_user")) & (F.col("b_topic") == F.col("k_topic"))
                  & (F.col("b_ts") < F.col("k_ts")) & (F.col("b_ts") >= F.col("k_ts") - LONG_WINDOW_DAYS * DAY))
    same_cat = F.col("b_cat") == F.col("k_cat")
    short_from = F.col("k_ts") - tc.short_term_days * DAY
    # With styles the long-term recencies count only behaviors of the candidate's style; ST counts all.
    lasting = (F.col("b_style") == F.col("k_style")) if styles else F.lit(True)
    feats = hits.groupBy("k_id").agg(F.max(F.when(same_cat & lasting, F.col("b_ts"))).alias("last_cat_ts"),
                                     (F.max(F.when(lasting, F.col("b_ts"))) if styles else F.max("b_ts"))
                                     .alias("last_topic_ts"),
                                     F.count(F.when(same_cat & (F.col("b_ts") >= short_from), 1)).alias("n_short"))
    agg = (candidates.join(users.select("user_id", "n_interests"), "user_id")
           .join(feats, F.col("impression_id") == F.col("k_id"), "left")
           .withColumn("n_short", F.coalesce(F.col("n_short"), F.lit(0))))
    u, c = F.col("user_id"), F.col("category_id")

    def recency(last_ts: str) -> Column:
        days = (F.col("ts") - F.col(last_ts)) / float(DAY)
        return F.when(F.col(last_ts).isNull(), F.lit(0.0)).otherwise(F.exp(-days / tc.long_term_decay_days))

    agg = agg.select("*", recency("last_cat_ts").alias("_rc"), recency("last_topic_ts").alias("_rt"))
    style = style_of(gc, F.col("item_id")) if styles else None
    lt = _max_over_interests(gc, u, c, F.col("n_interests"), F.col("_rc"), F.col("_rt"), style)
    a = long_term_affinity(gc, u, c, F.col("n_interests"))
    st = F.lit(1.0) - F.exp(-F.col("n_short") / tc.short_term_saturation)
    fav = F.when((a > 0) & is_favorite(gc, u, c, F.col("item_id")), 1.0).otherwise(0.0)
    short_logit = F.lit(tc.bias) + tc.short_term * st
    p = _sigmoid(short_logit + tc.long_term * lt + tc.favorite_item * fav)
    out = agg.select("impression_id", "user_id", "item_id", "category_id", "ts", p.alias("p_click"),
                     _sigmoid(short_logit).alias("p_click_short"), "dt")
    label = (_u(gc.seed, "click", F.col("impression_id")) < F.col("p_click")).cast("int")
    return out.select("impression_id", "user_id", "item_id", "category_id", "ts", label.alias("label"),
                      "p_click", "p_click_short", "dt")


def item_topics(spark: SparkSession, gc: GeneratorConfig) -> DataFrame:
    """The hidden catalog structure (item_id, category_id, topic_id, and ``style`` 0..S-1 when
    ``styles_per_category`` S > 0), for search diagnostics only."""
    items = spark.range(1, gc.items_per_category * gc.categories + 1).select(F.col("id").alias("item_id"))
    category = ((F.col("item_id") - 1) % F.lit(gc.categories) + 1).cast("long")
    style = [style_of(gc, F.col("item_id")).alias("style")] if gc.styles_per_category else []
    return items.select("item_id", category.alias("category_id"), topic_of(gc, category).alias("topic_id"), *style)


def auc_by_date(impressions: DataFrame, score: str) -> dict[str, float]:
    """ROC AUC of ``score`` against ``label`` per ``dt`` (ties averaged), computed in Spark from the
    (dt, score) counts, so it needs no driver-side copy of the impressions."""
    from pyspark.sql import Window
    counts = impressions.groupBy("dt", F.col(score).alias("s")).agg(
        F.sum("label").cast("double").alias("pos"), F.sum(1 - F.col("label")).cast("double").alias("neg"))
    below = F.coalesce(F.sum("neg").over(Window.partitionBy("dt").orderBy("s")
                                         .rowsBetween(Window.unboundedPreceding, -1)), F.lit(0.0))
    pairs = counts.select("dt", "pos", "neg", (F.col("pos") * (below + 0.5 * F.col("neg"))).alias("won"))
    rows = pairs.groupBy("dt").agg(F.sum("won").alias("won"), F.sum("pos").alias("p"),
                                   F.sum("neg").alias("n")).collect()
    return {r.dt: (r.won / (r.p * r.n) if r.p and r.n else float("nan")) for r in sorted(rows)}


def generate_impressions(users: DataFrame, behaviors: DataFrame, gc: GeneratorConfig) -> DataFrame:
    """Impressions with labels of the last ``impression_days`` days; ``behaviors`` are the accepted ones."""
    return click_truth(impression_candidates(users, gc), users, behaviors, gc)
