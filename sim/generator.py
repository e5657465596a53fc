"""Synthetic lifelong behavior logs with the structure SIM is about (Pi et al. 2020, sections 1, 3, 5.4).

SIM only helps when a user's interest in the candidate's category shows in behaviors that are *old*:
long-term interests revisited at intervals longer than the 14-day short-term window, item-level repeats
inside those categories, and a click model where that long-term interest matters as much as the recent
one. This module generates such logs in Spark, without driver-side loops, so the same code produces a
one-minute demo or tens of millions of behaviors.

Randomness: every draw is ``xxhash64(seed, tag, ids...)`` mapped to a uniform number in [0, 1) (53 bits),
so rows do not depend on partitioning or execution order and a run with the same config is identical.

Model (config keys of the ``generator:`` block of conf/pipeline.yaml in parentheses)
--------------------------------------------------------------------------------------
Catalog. ``categories`` categories; category c owns items c, c + C, c + 2C, ... (``items`` / C items
each, so category(item) = (item - 1) mod C + 1 and ids start at 1; 0 stays padding). Categories are
grouped into ``topics`` latent topics: topic(c) = (c - 1) mod T + 1, so a topic holds every T-th category
(about C / T of them, popular and rare ones mixed). Topics are hidden: no table a model trains on carries
them; ``item_topics`` (item_id, category_id, topic_id) is written for diagnostics only. Category
popularity is a power law: a popular category is 1 + floor(C * v^2) for uniform v; an item's popularity
rank inside its category is floor(M * v^3).

History length. n_u behaviors per user over ``history_days`` days ending on ``end_date``: Pareto with
tail index ``tail_index`` whose scale is solved so that the mean of min(n, ``max_behaviors_per_user``)
is ``mean_behaviors_per_user``; clipped to [``min_behaviors_per_user``, ``max_behaviors_per_user``]. The
first ``heavy_users`` users get exactly ``max_behaviors_per_user`` (54,000 reproduces the paper's
longest sequences; the demo default keeps them at the long sequence cap).

Each behavior comes from one of three sources:
1. Long-term interest (share ``share_long_term``). A user has L_u = clip(``interests_min`` +
   floor(log2(1 + n_u / 100)), ``interests_min``, ``interests_max``) interests k = 0..L_u-1, each held
   at topic level: a popular topic tau_k (1 + floor(T * v^2)) and a home category h_k inside it (the
   topic's popular categories first), with weight w_k = (k+1)^(2/3) - k^(2/3) (w_0 = 1; a behavior
   picks interest floor(L_u * v^1.5), so w_k is proportional to how often interest k is visited).
   Interest k is *revisited* every P_k days, P_k uniform in [``revisit_min_days``,
   ``revisit_max_days``] (> 14), from a random phase: a visit is a 2-hour session on day
   phase_k + s * P_k. A visit goes to one category: with probability x = ``cross_category_share``
   any category of the topic (uniformly), else the home category. So with x > 0 the same lasting
   interest shows in several categories, and the visit before the last one may be in another category
   than the candidate's. Inside the category a behavior repeats one of the user's
   ``favorites_per_category`` favorite items with probability ``repeat_prob`` (item-level repeat
   preference), else picks a popular item.
2. Short-term burst (share ``share_burst``). B_u = max(1, round(n_u * share_burst / ``burst_size``))
   bursts, each a popular category visited intensively for 1-3 days. Burst 0 is recent: it starts in the
   10 days before the impression window or inside it; the others are spread over the history.
3. Noise (the rest): a popular category and item at a uniform time.
behavior_type: pv 85%, cart 6%, fav 5%, buy 4%.

Impressions. On each of the last ``impression_days`` days every user sees ``impressions_per_user_day``
candidates at uniform times t of the day. The candidate's category is one of the user's long-term
interests (35%: the home category, or with probability x any category of the interest's topic; then a
favorite item with probability 0.3), the recent burst's category (25%), another burst's category (10%)
or a popular category (30%).

Hidden click model (``truth:``), using only the user's behaviors with ts < t (point-in-time):
    LT = max_k w_k * [(1 - x) * 1{c = h_k} * exp(-delta_c / tau) + x * 1{topic(c) = tau_k} * exp(-delta_T / tau)]
         long-term interest in the candidate: delta_c = days since the user's last behavior in the
         candidate's category c, delta_T = days since the last behavior in any category of c's topic,
         both within the 180-day long window (a term is 0 without such a behavior); tau =
         ``long_term_decay_days``. The first term is what hard search (same category) can see; the
         second needs behaviors of other categories of the topic, which only soft search retrieves.
    ST = 1 - exp(-n14_c / ``short_term_saturation``)          short-term interest
         n14_c = the user's behaviors in c during the ``short_term_days`` days before t
    FAV = 1 if the candidate is one of the user's favorite items of a category with long-term affinity
         a(u, c) = max_k w_k * [(1 - x) * 1{c = h_k} + x * 1{topic(c) = tau_k}] > 0
    p_click = sigmoid(``bias`` + ``long_term`` * LT + ``short_term`` * ST + ``favorite_item`` * FAV)
    label ~ Bernoulli(p_click)
    p_click_short = sigmoid(``bias`` + ``short_term`` * ST): the same model without its long-term terms
         (LT and FAV), the best ranking a model that sees only the last 14 days can be held to.
``long_term`` = ``short_term`` by default: the long-term interest matters as much as the short-term one.
With x = 0 every visit and every long-term candidate stays in the home category and LT is the
category-only model (delta_T plays no part): soft search can at best equal hard search. With x = 1 the
interest is a topic: the candidate's own category holds only part of it.
Because long-term interests are revisited every 21-60 days, many candidates of a long-term interest have
no same-category behavior in the last 14 days (d_category > 14): a short-window model (DIN) cannot see
them, a model that searches the lifelong history can. ``p_click`` and ``p_click_short`` are stored with
each impression, so every model's AUC is read against both oracles (``generate_logs`` prints them per
impression date).

Generated rows go through :mod:`sim.validation` like any input (a rare exact duplicate event, two
behaviors of a user at the same second on the same item, goes to ``rejects``).
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import math
from dataclasses import dataclass, field
from typing import Mapping

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from sim.canonical import day_start_ts, dt_of
from sim.config import ConfigError

DAY = 86400
ITEM_TOPICS_TABLE = "item_topics"  # hidden ground truth: item -> topic, read by diagnostics only
LONG_WINDOW_DAYS = 180  # the paper's long-term window; LT uses behaviors inside it
_ZIPF_CATEGORY = 2.0
_ZIPF_ITEM = 3.0
_INTEREST_SKEW = 1.5
_SESSION_SECONDS = 2 * 3600
_RECENT_BURST_LEAD_DAYS = 10
_TYPE_CUTS = ((0.85, "pv"), (0.91, "cart"), (0.96, "fav"))


@dataclass(frozen=True)
class TruthConfig:
    bias: float = -2.5
    long_term: float = 3.0
    short_term: float = 3.0
    favorite_item: float = 1.0
    long_term_decay_days: float = 60.0
    short_term_days: int = 14
    short_term_saturation: float = 3.0


@dataclass(frozen=True)
class GeneratorConfig:
    seed: int = 7
    end_date: str = "2024-07-01"
    history_days: int = 200
    impression_days: int = 4
    users: int = 3000
    items: int = 50000
    categories: int = 200
    topics: int = 40
    cross_category_share: float = 0.5
    mean_behaviors_per_user: float = 250
    min_behaviors_per_user: int = 10
    max_behaviors_per_user: int = 600
    heavy_users: int = 2
    tail_index: float = 1.5
    interests_min: int = 2
    interests_max: int = 10
    revisit_min_days: int = 21
    revisit_max_days: int = 60
    share_long_term: float = 0.6
    share_burst: float = 0.25
    burst_size: int = 20
    repeat_prob: float = 0.5
    favorites_per_category: int = 5
    impressions_per_user_day: int = 16
    partitions: int = 0  # 0 = one per ~500k behaviors, at least 2
    truth: TruthConfig = field(default_factory=TruthConfig)

    @classmethod
    def from_conf(cls, block: Mapping | None) -> "GeneratorConfig":
        """From the ``generator:`` block; unknown keys are a :class:`ConfigError`."""
        block = dict(block or {})
        truth = dict(block.pop("truth", {}) or {})
        names = {f.name for f in dataclasses.fields(cls)} - {"truth"}
        unknown = set(block) - names
        unknown_truth = set(truth) - {f.name for f in dataclasses.fields(TruthConfig)}
        if unknown or unknown_truth:
            names = sorted(unknown) + ["truth." + k for k in sorted(unknown_truth)]
            raise ConfigError(f"unknown generator keys: {names}")
        types = {f.name: f.type for f in dataclasses.fields(cls)}
        kwargs = {k: _coerce(v, types[k]) for k, v in block.items()}
        ttypes = {f.name: f.type for f in dataclasses.fields(TruthConfig)}
        gc = cls(**kwargs, truth=TruthConfig(**{k: _coerce(v, ttypes[k]) for k, v in truth.items()}))
        gc.check()
        return gc

    def check(self) -> None:
        problems = []
        if self.users < 1 or self.categories < 1 or self.items < self.categories:
            problems.append("need users >= 1, categories >= 1 and items >= categories")
        if not 1 <= self.topics <= self.categories:
            problems.append("need 1 <= topics <= categories")
        if not 0.0 <= self.cross_category_share <= 1.0:
            problems.append("cross_category_share must be in [0, 1]")
        if self.history_days < self.impression_days + _RECENT_BURST_LEAD_DAYS + 5:
            problems.append(f"history_days must be >= impression_days + {_RECENT_BURST_LEAD_DAYS + 5}")
        if self.impression_days < 1 or self.impression_days > self.history_days:
            problems.append("impression_days must be in [1, history_days]")
        if not 1 <= self.min_behaviors_per_user <= self.mean_behaviors_per_user <= self.max_behaviors_per_user:
            problems.append("need 1 <= min_behaviors_per_user <= mean_behaviors_per_user "
                            "<= max_behaviors_per_user")
        if self.heavy_users > self.users:
            problems.append("heavy_users must be <= users")
        if self.tail_index <= 1.0:
            problems.append("tail_index must be > 1 (finite mean)")
        if not 15 <= self.revisit_min_days <= self.revisit_max_days:
            problems.append("need 15 <= revisit_min_days <= revisit_max_days (revisits beyond the 14-day window)")
        if self.share_long_term < 0 or self.share_burst < 0 or self.share_long_term + self.share_burst > 1:
            problems.append("share_long_term + share_burst must be in [0, 1]")
        if not 1 <= self.interests_min <= self.interests_max:
            problems.append("need 1 <= interests_min <= interests_max")
        if self.favorites_per_category < 1 or self.burst_size < 1 or self.impressions_per_user_day < 1:
            problems.append("favorites_per_category, burst_size, impressions_per_user_day must be >= 1")
        try:
            dt.date.fromisoformat(self.end_date)
        except ValueError:
            problems.append(f"end_date {self.end_date!r} is not yyyy-MM-dd")
        if problems:
            raise ConfigError("generator config: " + "; ".join(problems))

    # Derived quantities -------------------------------------------------------------------------
    @property
    def items_per_category(self) -> int:
        return self.items // self.categories

    @property
    def start_ts(self) -> int:
        """Epoch seconds of 00:00 UTC of the first history day."""
        return day_start_ts(self.end_date) - (self.history_days - 1) * DAY

    @property
    def first_date(self) -> str:
        return (dt.date.fromisoformat(self.end_date) - dt.timedelta(days=self.history_days - 1)).isoformat()

    @property
    def first_impression_date(self) -> str:
        return (dt.date.fromisoformat(self.end_date)
                - dt.timedelta(days=self.impression_days - 1)).isoformat()

    def pareto_scale(self) -> float:
        """x_m such that E[min(Pareto(x_m, a), max)] = mean_behaviors_per_user."""
        a, cap, mean = self.tail_index, float(self.max_behaviors_per_user), float(self.mean_behaviors_per_user)

        def capped_mean(xm: float) -> float:
            if xm >= cap:
                return cap
            return xm * a / (a - 1) - xm ** a * cap ** (1 - a) / (a - 1)

        lo, hi = 1e-9, cap
        for _ in range(200):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if capped_mean(mid) < mean else (lo, mid)
        return (lo + hi) / 2


def _coerce(value, typ):
    name = typ if isinstance(typ, str) else getattr(typ, "__name__", str(typ))
    try:
        if name == "int":
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if name == "float":
            return float(value)
        if name == "str":
            return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"generator value {value!r} must be {name}") from None
    return value


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
    df = df.select("user_id", "j", category.cast("long").alias("category_id"), sec.alias("sec"),
                   p_repeat.alias("p_repeat"))
    c = c_("category_id")
    fav = _favorite_item(gc, u, c, _floor_mul(r("f"), gc.favorites_per_category))
    item = F.when(r("repeat") < c_("p_repeat"), fav).otherwise(_popular_item(gc, c, r("pop")))
    t = r("type")
    btype = F.when(t < _TYPE_CUTS[0][0], _TYPE_CUTS[0][1])
    for cut, name in _TYPE_CUTS[1:]:
        btype = btype.when(t < cut, name)
    btype = btype.otherwise("buy")
    df = df.select("user_id", item.alias("item_id"), "category_id", btype.alias("behavior_type"),
                   (F.lit(gc.start_ts) + c_("sec")).cast("long").alias("ts"))
    return df.withColumn("dt", dt_of(c_("ts")))


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
    df = df.select("user_id", "m", "ts", cat.alias("category_id"),
                   ((F.col("src") < 0.35) & (r("cfav") < 0.3)).alias("_as_fav"))
    c = F.col("category_id")
    item = F.when(F.col("_as_fav"), _favorite_item(gc, u, c, _floor_mul(r("cf"), gc.favorites_per_category))) \
        .otherwise(_popular_item(gc, c, r("cpop")))
    impression_id = (u - 1) * per_user + m + 1
    return df.select(impression_id.cast("long").alias("impression_id"), "user_id", item.alias("item_id"),
                     c.cast("long").alias("category_id"), "ts", dt_of(F.col("ts")).alias("dt"))


def _max_over_interests(gc: GeneratorConfig, user: Column, category: Column, n_interests: Column,
                        same_category: Column, same_topic: Column) -> Column:
    """max_k w_k * [(1 - x) * 1{c = h_k} * same_category + x * 1{topic(c) = tau_k} * same_topic]."""
    x = gc.cross_category_share
    ks = F.sequence(F.lit(0).cast("long"), n_interests - 1)
    topic = topic_of(gc, category)

    def term(k: Column) -> Column:
        tau = _interest_topic(gc, user, k)
        home = F.when(_home_category(gc, user, k, tau) == category, same_category).otherwise(F.lit(0.0))
        other = F.when(tau == topic, same_topic).otherwise(F.lit(0.0))
        return _interest_weight(k) * (F.lit(1.0 - x) * home + F.lit(x) * other)

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
    b = behaviors.select(F.col("user_id").alias("b_user"), F.col("category_id").alias("b_cat"),
                         topic_of(gc, F.col("category_id")).alias("b_topic"), F.col("ts").alias("b_ts"))
    keys = candidates.select(F.col("impression_id").alias("k_id"), F.col("user_id").alias("k_user"),
                             F.col("category_id").alias("k_cat"),
                             topic_of(gc, F.col("category_id")).alias("k_topic"), F.col("ts").alias("k_ts"))
    # Impressions are few next to behaviors: broadcast them and stream the behaviors once, unshuffled.
    hits = b.join(F.broadcast(keys), (F.col("b_user") == F.col("k_user")) & (F.col("b_topic") == F.col("k_topic"))
                  & (F.col("b_ts") < F.col("k_ts")) & (F.col("b_ts") >= F.col("k_ts") - LONG_WINDOW_DAYS * DAY))
    same_cat = F.col("b_cat") == F.col("k_cat")
    short_from = F.col("k_ts") - tc.short_term_days * DAY
    feats = hits.groupBy("k_id").agg(F.max(F.when(same_cat, F.col("b_ts"))).alias("last_cat_ts"),
                                     F.max("b_ts").alias("last_topic_ts"),
                                     F.count(F.when(same_cat & (F.col("b_ts") >= short_from), 1)).alias("n_short"))
    agg = (candidates.join(users.select("user_id", "n_interests"), "user_id")
           .join(feats, F.col("impression_id") == F.col("k_id"), "left")
           .withColumn("n_short", F.coalesce(F.col("n_short"), F.lit(0))))
    u, c = F.col("user_id"), F.col("category_id")

    def recency(last_ts: str) -> Column:
        days = (F.col("ts") - F.col(last_ts)) / float(DAY)
        return F.when(F.col(last_ts).isNull(), F.lit(0.0)).otherwise(F.exp(-days / tc.long_term_decay_days))

    agg = agg.select("*", recency("last_cat_ts").alias("_rc"), recency("last_topic_ts").alias("_rt"))
    lt = _max_over_interests(gc, u, c, F.col("n_interests"), F.col("_rc"), F.col("_rt"))
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
    """The hidden catalog structure (item_id, category_id, topic_id), for search diagnostics only."""
    items = spark.range(1, gc.items_per_category * gc.categories + 1).select(F.col("id").alias("item_id"))
    category = ((F.col("item_id") - 1) % F.lit(gc.categories) + 1).cast("long")
    return items.select("item_id", category.alias("category_id"), topic_of(gc, category).alias("topic_id"))


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
