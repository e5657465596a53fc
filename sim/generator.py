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
each, so category(item) = (item - 1) mod C + 1 and ids start at 1; 0 stays padding). Category popularity
is a power law: a popular category is 1 + floor(C * v^2) for uniform v; an item's popularity rank inside
its category is floor(M * v^3).

History length. n_u behaviors per user over ``history_days`` days ending on ``end_date``: Pareto with
tail index ``tail_index`` whose scale is solved so that the mean of min(n, ``max_behaviors_per_user``)
is ``mean_behaviors_per_user``; clipped to [``min_behaviors_per_user``, ``max_behaviors_per_user``]. The
first ``heavy_users`` users get exactly ``max_behaviors_per_user`` (54,000 reproduces the paper's
longest sequences; the demo default keeps a few thousand).

Each behavior comes from one of three sources:
1. Long-term interest (share ``share_long_term``). A user has L_u = clip(``interests_min`` +
   floor(log2(1 + n_u / 100)), ``interests_min``, ``interests_max``) interests k = 0..L_u-1, each a
   popular category with weight w_k = (k+1)^(2/3) - k^(2/3) (w_0 = 1; a behavior picks interest
   floor(L_u * v^1.5), so w_k is proportional to how often interest k is visited). Interest k is
   *revisited* every P_k days, P_k uniform in [``revisit_min_days``, ``revisit_max_days``] (> 14), from a
   random phase: a visit is a 2-hour session on day phase_k + s * P_k. Inside the category a behavior
   repeats one of the user's ``favorites_per_category`` favorite items with probability ``repeat_prob``
   (item-level repeat preference), else picks a popular item.
2. Short-term burst (share ``share_burst``). B_u = max(1, round(n_u * share_burst / ``burst_size``))
   bursts, each a popular category visited intensively for 1-3 days. Burst 0 is recent: it starts in the
   10 days before the impression window or inside it; the others are spread over the history.
3. Noise (the rest): a popular category and item at a uniform time.
behavior_type: pv 85%, cart 6%, fav 5%, buy 4%.

Impressions. On each of the last ``impression_days`` days every user sees ``impressions_per_user_day``
candidates at uniform times t of the day. The candidate's category is one of the user's long-term
interests (35%, then a favorite item with probability 0.3), the recent burst's category (25%), another
burst's category (10%) or a popular category (30%).

Hidden click model (``truth:``), using only the user's behaviors with ts < t (point-in-time):
    LT = a(u, c) * exp(-delta_c / ``long_term_decay_days``)   long-term interest in the candidate's category
         a(u, c) = max w_k over the user's interests k in category c (0 if none); delta_c = days since the
         user's last behavior in c within the 180-day long window (LT = 0 if there is none)
    ST = 1 - exp(-n14_c / ``short_term_saturation``)          short-term interest
         n14_c = the user's behaviors in c during the ``short_term_days`` days before t
    FAV = 1 if the candidate is one of the user's favorite items of a long-term interest category
    p_click = sigmoid(``bias`` + ``long_term`` * LT + ``short_term`` * ST + ``favorite_item`` * FAV)
    label ~ Bernoulli(p_click)
``long_term`` = ``short_term`` by default: the long-term interest matters as much as the short-term one.
Because long-term categories are revisited every 21-60 days, many candidates of a long-term interest have
no same-category behavior in the last 14 days (d_category > 14): a short-window model (DIN) cannot see
them, a model that searches the lifelong history by category (SIM hard search) can. ``p_click`` is stored
with each impression, so tests compute the oracle AUC.

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
    impression_days: int = 3
    users: int = 300
    items: int = 50000
    categories: int = 200
    mean_behaviors_per_user: float = 400
    min_behaviors_per_user: int = 10
    max_behaviors_per_user: int = 6000
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
    impressions_per_user_day: int = 10
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


def _interest_category(gc: GeneratorConfig, user: Column, k: Column) -> Column:
    return _popular_category(gc, _u(gc.seed, "icat", user, k))


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
    long_sec = ((c_("phase") + c_("s") * c_("period")) * DAY + F.lit(8 * 3600)
                + _floor_mul(_u(seed, "hour", u, c_("k"), c_("s")), 14 * 3600)
                + _floor_mul(r("offset"), _SESSION_SECONDS))
    # 2. burst b: 1-3 days of one category
    duration = 1 + _floor_mul(_u(seed, "bdur", u, c_("b")), 3)
    burst_sec = F.least(_burst_start_day(gc, u, c_("b")) * DAY + _floor_mul(r("bt"), duration * DAY),
                        F.lit(gc.history_days * DAY - 1))
    # 3. noise
    noise_sec = _floor_mul(r("nt"), gc.history_days * DAY)
    category = (F.when(is_long, _interest_category(gc, u, c_("k")))
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
    cat = (F.when(src < 0.35, _interest_category(gc, u, k))
           .when(src < 0.60, _burst_category(gc, u, F.lit(0)))
           .when(src < 0.70, _burst_category(gc, u, old_burst))
           .otherwise(_popular_category(gc, r("ccat"))))
    df = df.select("user_id", "m", ts.cast("long").alias("ts"), cat.alias("category_id"),
                   ((src < 0.35) & (r("cfav") < 0.3)).alias("_as_fav"))
    c = F.col("category_id")
    item = F.when(F.col("_as_fav"), _favorite_item(gc, u, c, _floor_mul(r("cf"), gc.favorites_per_category))) \
        .otherwise(_popular_item(gc, c, r("cpop")))
    impression_id = (u - 1) * per_user + m + 1
    return df.select(impression_id.cast("long").alias("impression_id"), "user_id", item.alias("item_id"),
                     c.cast("long").alias("category_id"), "ts", dt_of(F.col("ts")).alias("dt"))


def long_term_affinity(gc: GeneratorConfig, user: Column, category: Column, n_interests: Column) -> Column:
    """a(u, c): the largest weight w_k of the user's interests k whose category is c (0 if none)."""
    ks = F.sequence(F.lit(0).cast("long"), n_interests - 1)
    return F.aggregate(ks, F.lit(0.0), lambda acc, k: F.greatest(
        acc, F.when(_interest_category(gc, user, k) == category, _interest_weight(k)).otherwise(F.lit(0.0))))


def is_favorite(gc: GeneratorConfig, user: Column, category: Column, item: Column) -> Column:
    fs = F.sequence(F.lit(0).cast("long"), F.lit(gc.favorites_per_category - 1).cast("long"))
    return F.exists(fs, lambda f: _favorite_item(gc, user, category, f) == item)


def click_truth(candidates: DataFrame, users: DataFrame, behaviors: DataFrame, gc: GeneratorConfig) -> DataFrame:
    """Impressions with ``p_click`` from the hidden model and a label drawn from it.

    Point-in-time: the features of an impression at t come from the user's behaviors with ts < t.
    """
    tc = gc.truth
    b = behaviors.select(F.col("user_id").alias("b_user"), F.col("category_id").alias("b_cat"),
                         F.col("ts").alias("b_ts"))
    keys = candidates.select(F.col("impression_id").alias("k_id"), F.col("user_id").alias("k_user"),
                             F.col("category_id").alias("k_cat"), F.col("ts").alias("k_ts"))
    # Impressions are few next to behaviors: broadcast them and stream the behaviors once, unshuffled.
    hits = b.join(F.broadcast(keys), (F.col("b_user") == F.col("k_user")) & (F.col("b_cat") == F.col("k_cat"))
                  & (F.col("b_ts") < F.col("k_ts")) & (F.col("b_ts") >= F.col("k_ts") - LONG_WINDOW_DAYS * DAY))
    short_from = F.col("k_ts") - tc.short_term_days * DAY
    feats = hits.groupBy("k_id").agg(F.max("b_ts").alias("last_ts"),
                                     F.count(F.when(F.col("b_ts") >= short_from, 1)).alias("n_short"))
    agg = (candidates.join(users.select("user_id", "n_interests"), "user_id")
           .join(feats, F.col("impression_id") == F.col("k_id"), "left")
           .withColumn("n_short", F.coalesce(F.col("n_short"), F.lit(0))))
    u, c = F.col("user_id"), F.col("category_id")
    a = long_term_affinity(gc, u, c, F.col("n_interests"))
    delta_days = (F.col("ts") - F.col("last_ts")) / float(DAY)
    lt = F.when(F.col("last_ts").isNull(), F.lit(0.0)).otherwise(a * F.exp(-delta_days / tc.long_term_decay_days))
    st = F.lit(1.0) - F.exp(-F.col("n_short") / tc.short_term_saturation)
    fav = F.when((a > 0) & is_favorite(gc, u, c, F.col("item_id")), 1.0).otherwise(0.0)
    logit = F.lit(tc.bias) + tc.long_term * lt + tc.short_term * st + tc.favorite_item * fav
    p = F.lit(1.0) / (F.lit(1.0) + F.exp(-logit))
    out = agg.select("impression_id", "user_id", "item_id", "category_id", "ts", p.alias("p_click"), "dt")
    label = (_u(gc.seed, "click", F.col("impression_id")) < F.col("p_click")).cast("int")
    return out.select("impression_id", "user_id", "item_id", "category_id", "ts", label.alias("label"),
                      "p_click", "dt")


def generate_impressions(users: DataFrame, behaviors: DataFrame, gc: GeneratorConfig) -> DataFrame:
    """Impressions with labels of the last ``impression_days`` days; ``behaviors`` are the accepted ones."""
    return click_truth(impression_candidates(users, gc), users, behaviors, gc)
