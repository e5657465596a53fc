"""Synthetic lifelong logs: the structure SIM needs (heavy-tailed histories, long-term interests revisited
beyond 14 days, a click truth where long-term interest matters) and the pipeline rules (point-in-time,
determinism, validation counts)."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import functions as F

from sim.config import ConfigError
from sim.adapters.delta_io import read_table, table_path
from sim.inputs.generator.settings import DAY, GeneratorConfig
from sim.inputs.generator.impressions import auc_by_date, click_truth, impression_candidates, item_topics
from sim.inputs.generator.behaviors import (_home_category, _interest_style, generate_behaviors, style_of, topic_of,
                                            user_profiles)
from sim.inputs.ingest import run_generator

SMALL = dict(users=150, impression_days=2, impressions_per_user_day=10, max_behaviors_per_user=3000,
             heavy_users=1)


def auc(labels, scores) -> float:
    y = np.asarray(labels)
    ranks = pd.Series(np.asarray(scores, dtype=float)).rank().to_numpy()
    n1, n0 = y.sum(), len(y) - y.sum()
    return float((ranks[y == 1].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


@pytest.fixture(scope="module")
def generated(spark, tmp_path_factory):
    lake = tmp_path_factory.mktemp("gen_lake")
    gc = GeneratorConfig.parse(SMALL)
    report = run_generator(spark, gc, str(lake), max_reject_ratio=0.05)
    beh = read_table(spark, table_path(str(lake), "behaviors"))
    imp = read_table(spark, table_path(str(lake), "impressions"))
    rej = read_table(spark, table_path(str(lake), "rejects"))
    return gc, report, beh, imp, rej, lake


def topic_spread(spark, **over) -> pd.DataFrame:
    """Per user of a small generated log: distinct categories (with >= 3 behaviors) of the user's most
    visited topic, and whether the topic is revisited across categories more than 14 days apart."""
    gc = GeneratorConfig.parse(dict(users=60, mean_behaviors_per_user=300, max_behaviors_per_user=1500,
                                        heavy_users=0, **over))
    b = generate_behaviors(user_profiles(spark, gc), gc).withColumn("topic", topic_of(gc, F.col("category_id")))
    b = b.toPandas()
    rows = []
    for u, g in b.groupby("user_id"):
        top = g[g.topic == g.topic.value_counts().index[0]].sort_values("ts")
        cats = top.category_id.value_counts()
        days = top.assign(day=top.ts // DAY).drop_duplicates(["day", "category_id"])
        switch = (days.category_id.diff() != 0) & (days.day.diff() > 14)
        rows.append({"user_id": u, "categories": int((cats >= 3).sum()), "cross_revisit": bool(switch.iloc[1:].any())})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def features(generated):
    """Per impression: d_category and same-category behavior counts over 180 and 14 days (ts < t)."""
    _, _, beh, imp, _, _ = generated
    b = beh.select(F.col("user_id").alias("bu"), F.col("category_id").alias("bc"), F.col("ts").alias("bts"))
    j = imp.join(b, (imp.user_id == b.bu) & (imp.category_id == b.bc) & (b.bts < imp.ts), "left")
    f = j.groupBy("impression_id", "label", "p_click", "p_click_short", "dt", "ts").agg(
        F.max("bts").alias("last"),
        F.count(F.when(b.bts >= F.col("ts") - 180 * DAY, 1)).alias("n180"),
        F.count(F.when(b.bts >= F.col("ts") - 14 * DAY, 1)).alias("n14")).toPandas()
    f["d_category"] = np.where(f["last"].isna(), -1, (f["ts"] - f["last"].fillna(0)) // DAY)
    return f


def test_counts_dates_and_rejects(generated):
    gc, report, beh, imp, rej, _ = generated
    b_in, i_in = report.inputs
    assert b_in.counts.read == b_in.counts.accepted + b_in.counts.rejected
    assert i_in.counts.read == gc.users * gc.impression_days * gc.impressions_per_user_day == i_in.counts.accepted
    assert beh.count() == b_in.counts.accepted and imp.count() == i_in.counts.accepted
    assert rej.count() == b_in.counts.rejected
    assert set(b_in.counts.rejected_by_reason) <= {"duplicate_event"}
    dates = sorted(r.dt for r in beh.select("dt").distinct().collect())
    assert (dates[0], dates[-1]) == (gc.first_date, gc.end_date) and len(dates) == gc.history_days
    assert sorted(r.dt for r in imp.select("dt").distinct().collect()) == ["2024-06-30", "2024-07-01"]
    assert beh.where("user_id <= 0 OR item_id <= 0 OR category_id <= 0").count() == 0
    # The category of an item is a function of the item.
    assert beh.groupBy("item_id").agg(F.countDistinct("category_id").alias("n")).where("n > 1").count() == 0


def test_heavy_tailed_history(generated):
    gc, _, beh, _, rej, _ = generated
    per_user = beh.groupBy("user_id").agg(F.count(F.lit(1)).alias("n"), F.min("ts").alias("a"),
                                          F.max("ts").alias("b")).toPandas().set_index("user_id")
    dup_user1 = sum(1 for r in rej.collect() if json.loads(r.raw)["user_id"] == 1)
    assert per_user.loc[1, "n"] + dup_user1 == gc.max_behaviors_per_user
    assert (per_user.loc[1, "b"] - per_user.loc[1, "a"]) / DAY >= 180
    n = per_user["n"]
    assert n.max() / n.median() > 5  # heavy tail
    assert abs(n.mean() - gc.mean_behaviors_per_user) / gc.mean_behaviors_per_user < 0.5


def test_long_term_interests_revisited_beyond_short_window(generated):
    _, _, beh, _, _, _ = generated
    # Per (user, category): distinct visit days; long-term interests come back after more than 14 days.
    days = (beh.where("user_id <= 20").select("user_id", "category_id", F.floor(F.col("ts") / DAY).alias("d"))
            .distinct().toPandas().sort_values(["user_id", "category_id", "d"]))
    gaps = days.groupby(["user_id", "category_id"])["d"].diff().dropna()
    assert (gaps > 14).mean() > 0.1
    # Item-level repeats: some (user, item) pairs recur many times.
    repeats = beh.groupBy("user_id", "item_id").count().where("count >= 5").count()
    assert repeats > 50


def test_oracle_auc_of_one_day(features):
    day = features[features.dt == "2024-07-01"]
    assert len(day) == 1500
    assert auc(day.label, day.p_click) >= 0.8
    # Without its long-term terms the click model ranks worse, but its short-term part still ranks.
    assert 0.6 < auc(day.label, day.p_click_short) < auc(day.label, day.p_click) - 0.03
    assert (features.p_click_short <= features.p_click + 1e-12).all()


def test_oracle_aucs_per_date_match_a_driver_side_auc(generated, features):
    _, report, _, imp, _, _ = generated
    got = auc_by_date(imp, "p_click")
    for d, g in features.groupby("dt"):
        assert got[d] == pytest.approx(auc(g.label, g.p_click), abs=1e-12)
    assert any(line.startswith("oracle AUC 2024-07-01: p_click ") for line in report.details)


def test_item_topics_table(generated, spark):
    gc, _, beh, _, _, lake = generated
    topics = read_table(spark, table_path(str(lake), "item_topics"))
    assert topics.count() == gc.items
    # Every item a behavior names is in the table with the behavior's category; a topic spans categories.
    joined = beh.select("item_id", "category_id").distinct().join(topics, ["item_id", "category_id"], "left_anti")
    assert joined.count() == 0
    per_topic = topics.groupBy("topic_id").agg(F.countDistinct("category_id").alias("n")).toPandas()
    assert len(per_topic) == gc.topics and (per_topic.n == gc.categories // gc.topics).all()


def test_long_term_interests_span_the_categories_of_a_topic(spark):
    """A lasting interest is held at topic level: with cross_category_share = 1 it shows in several of
    the topic's categories and is revisited through another category more than 14 days later; with 0 it
    stays in one category (today's category-only model)."""
    spread, single = topic_spread(spark, cross_category_share=1.0), topic_spread(spark, cross_category_share=0.0)
    assert spread.categories.mean() >= 2.5 and single.categories.mean() <= 1.5
    assert spread.cross_revisit.mean() > 0.5


def test_long_term_affinity_beats_short_window_beyond_14_days(features):
    old = features[features.d_category > 14]
    assert old.label.sum() >= 30  # there are clicks whose category was last seen more than 14 days ago
    long_auc, short_auc = auc(old.label, old.n180), auc(old.label, old.n14)
    assert long_auc > short_auc + 0.1, (long_auc, short_auc)
    # Both signals matter over all impressions.
    assert auc(features.label, features.n180) > 0.6 and auc(features.label, features.n14) > 0.6


def test_point_in_time_truth(spark):
    """Behaviors at or after an impression's ts never change its click probability; earlier ones do."""
    from pyspark.sql import Window
    gc = GeneratorConfig.parse(dict(users=12, mean_behaviors_per_user=200, max_behaviors_per_user=1000,
                                        heavy_users=0, impression_days=1, impressions_per_user_day=5))
    users = user_profiles(spark, gc)
    beh = generate_behaviors(users, gc)
    cands = impression_candidates(users, gc)
    # Impressions alone in their (user, topic): a behavior added for one of them touches no other (the
    # click model reads the candidate's category and the other categories of its topic).
    topic = topic_of(gc, F.col("category_id"))
    alone = (cands.withColumn("n", F.count(F.lit(1)).over(Window.partitionBy(F.col("user_id"), topic)))
             .where("n = 1").drop("n"))

    def shifted(offsets):
        return (alone.select("user_id", "item_id", "category_id", F.lit("pv").alias("behavior_type"), "ts", "dt",
                             F.explode(F.array(*[F.lit(k) for k in offsets])).alias("off"))
                .withColumn("ts", F.col("ts") + F.col("off")).drop("off"))

    def p_click(behaviors):
        return {r.impression_id: r.p_click for r in click_truth(cands, users, behaviors, gc).collect()}

    base = p_click(beh)
    alone_ids = {r.impression_id for r in alone.collect()}
    assert len(base) == 60 and len(alone_ids) >= 20
    assert p_click(beh.unionByName(shifted((0, 1, 3600)))) == base
    earlier = p_click(beh.unionByName(shifted((-1, -3600))))
    assert {k for k in base if earlier[k] != base[k]} == alone_ids


def test_deterministic_and_partition_independent(spark):
    def digest(**over):
        gc = GeneratorConfig.parse(dict(users=30, mean_behaviors_per_user=100, max_behaviors_per_user=500,
                                            heavy_users=1, **over))
        b = generate_behaviors(user_profiles(spark, gc), gc)
        return b.agg(F.count(F.lit(1)), F.sum(F.xxhash64(*b.columns) % 1000003)).first()
    assert digest(partitions=2) == digest(partitions=5)
    assert digest(partitions=2) != digest(partitions=2, seed=8)


# Item styles (generator.styles_per_category) -------------------------------------------------------
STYLES_SMALL = dict(users=40, mean_behaviors_per_user=100, max_behaviors_per_user=500, heavy_users=1,
                    impression_days=2, impressions_per_user_day=5, items=2000, categories=40, topics=8)


def rows_digest(df) -> tuple[int, int, int]:
    """(rows, two sums of a row hash): equal for equal row sets; doubles rounded to 1e-9 so a last-ulp
    difference of exp() between JVMs does not count."""
    h = F.xxhash64(*[F.round(c, 9) if t == "double" else F.col(c) for c, t in df.dtypes])
    r = df.agg(F.count(F.lit(1)), F.sum(h % 1000003), F.sum(F.shiftright(h, 32) % 999983)).first()
    return tuple(int(x) for x in r)


def test_styles_off_gives_the_rows_of_before_styles(spark):
    """styles_per_category = 0 (the default) keeps the generator's rows exactly: the digests below are
    those of the generator at commit a722032, before styles existed (tests/test_generator.py's
    rows_digest of the same config), so a change of the demo's data cannot pass unnoticed."""
    gc = GeneratorConfig.parse(STYLES_SMALL)
    assert gc.styles_per_category == 0
    users = user_profiles(spark, gc)
    beh = generate_behaviors(users, gc)
    imp = click_truth(impression_candidates(users, gc), users, beh, gc)
    topics = item_topics(spark, gc)
    assert topics.columns == ["item_id", "category_id", "topic_id"]
    assert rows_digest(beh) == (4314, 15286236, 19159368)
    assert rows_digest(imp) == (400, 3752413, 5714645)
    assert rows_digest(topics) == (2000, 4273879, 20904650)


def style_share(spark, focus: float) -> float:
    """The share of long-term behaviors (all behaviors of interest visits, each in its home category)
    that have their interest's style sigma_k, over (user, category) pairs that are one interest's home."""
    gc = GeneratorConfig.parse(dict(users=100, mean_behaviors_per_user=200, max_behaviors_per_user=1000,
                                    heavy_users=0, share_long_term=1.0, share_burst=0.0, cross_category_share=0.0,
                                    styles_per_category=4, style_focus=focus))
    users = user_profiles(spark, gc)
    u, k = F.col("user_id"), F.col("k")
    interests = users.select("user_id", F.explode(F.sequence(F.lit(0).cast("long"), F.col("n_interests") - 1))
                             .alias("k"))
    homes = (interests.select("user_id", _home_category(gc, u, k).alias("category_id"),
                              _interest_style(gc, u, k).alias("sigma"))
             .groupBy("user_id", "category_id").agg(F.count(F.lit(1)).alias("n"), F.first("sigma").alias("sigma"))
             .where("n = 1"))
    joined = generate_behaviors(users, gc).join(homes, ["user_id", "category_id"])
    r = joined.agg(F.count(F.lit(1)).alias("n"),
                   F.avg((style_of(gc, F.col("item_id")) == F.col("sigma")).cast("double")).alias("share")).first()
    assert r.n > 5000
    return r.share


def test_lasting_interests_keep_their_style(spark):
    """A behavior of interest k is of style sigma_k with probability style_focus, else of any style:
    share(f) = f + (1 - f) * share(0), where share(0) is what unfocused picks give by chance."""
    chance, focused = style_share(spark, 0.0), style_share(spark, 0.8)
    assert 0.15 < chance < 0.4, chance
    assert focused == pytest.approx(0.8 + 0.2 * chance, abs=0.02), (focused, chance)


def test_click_model_counts_only_behaviors_of_the_candidates_style(spark):
    """Hand-made rows: one user with one interest (home h, style sigma), behaviors in h of style sigma 30
    days before the impressions and of another style 20 days before. A candidate of style sigma gets
    LT = exp(-30 / tau) (its style's last behavior), one of another style LT = 0; without styles both
    get exp(-20 / tau), the category's last behavior."""
    tau, bias, lt_w = 60.0, -2.5, 3.0
    truth = {"favorite_item": 0.0, "bias": bias, "long_term": lt_w, "long_term_decay_days": tau}
    base = dict(users=1, heavy_users=0, impression_days=1, items=2000, categories=40, topics=8,
                cross_category_share=0.3, truth=truth)
    sty = GeneratorConfig.parse(dict(base, styles_per_category=4))
    user = spark.createDataFrame([(1, 1)], "user_id long, n_interests long")
    one = F.lit(1).cast("long")
    h, sigma = (int(v) for v in user.select(_home_category(sty, one, F.lit(0).cast("long")),
                                            _interest_style(sty, one, F.lit(0).cast("long"))).first())
    other = (sigma + 1) % 4
    item = lambda style: h + sty.categories * (style + 4 * 7)  # noqa: E731 - rank 28 + style of category h
    t = sty.start_ts + (sty.history_days - 1) * DAY + 12 * 3600
    beh = spark.createDataFrame([(1, item(sigma), h, "pv", t - 30 * DAY), (1, item(other), h, "pv", t - 20 * DAY)],
                                "user_id long, item_id long, category_id long, behavior_type string, ts long")
    cands = spark.createDataFrame([(1, 1, item(sigma), h, t, "x"), (2, 1, item(other), h, t, "x")],
                                  "impression_id long, user_id long, item_id long, category_id long, ts long, "
                                  "dt string")
    sig = lambda lt: 1 / (1 + math.exp(-(bias + lt_w * lt)))  # noqa: E731
    got = {r.impression_id: r.p_click for r in click_truth(cands, user, beh, sty).collect()}
    assert got[1] == pytest.approx(sig(math.exp(-30 / tau)), abs=1e-12)
    assert got[2] == pytest.approx(sig(0.0), abs=1e-12) and got[1] > got[2]
    plain = GeneratorConfig.parse(base)
    got = {r.impression_id: r.p_click for r in click_truth(cands, user, beh, plain).collect()}
    assert got[1] == got[2] == pytest.approx(sig(math.exp(-20 / tau)), abs=1e-12)


def test_styles_deterministic_with_style_column_and_candidates(spark):
    """With styles the rows stay a function of the config (not of partitioning) and ``item_topics``
    gets the style column."""
    over = dict(STYLES_SMALL, styles_per_category=4)

    def digest(**more):
        gc = GeneratorConfig.parse(dict(over, **more))
        b = generate_behaviors(user_profiles(spark, gc), gc)
        return rows_digest(b), rows_digest(impression_candidates(user_profiles(spark, gc), gc))
    assert digest(partitions=2) == digest(partitions=5)
    assert digest(partitions=2)[0] != (4314, 15286236, 19159368)  # the styles change the items
    gc = GeneratorConfig.parse(over)
    topics = item_topics(spark, gc).toPandas()
    assert (topics["style"] == ((topics.item_id - 1) // gc.categories) % 4).all()
    assert sorted(topics["style"].unique()) == [0, 1, 2, 3]


def test_a_54000_behavior_user(spark):
    gc = GeneratorConfig.parse(dict(users=3, heavy_users=1, max_behaviors_per_user=54000))
    b = generate_behaviors(user_profiles(spark, gc), gc).where("user_id = 1")
    row = b.agg(F.count(F.lit(1)).alias("n"), ((F.max("ts") - F.min("ts")) / DAY).alias("days"),
                F.countDistinct("category_id").alias("cats")).first()
    assert row.n == 54000 and row.days >= 180 and row.cats >= 10


def test_config_errors():
    with pytest.raises(ConfigError, match="generator.userz: unknown key"):
        GeneratorConfig.parse({"userz": 3})
    with pytest.raises(ConfigError, match="revisit"):
        GeneratorConfig.parse({"revisit_min_days": 7})
    with pytest.raises(ConfigError, match="styles_per_category <= items / categories"):
        GeneratorConfig.parse({"items": 400, "categories": 200, "styles_per_category": 3})
