"""The generator's settings and ground-truth click model parameters (validated, with defaults).
"""
from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass, field
from typing import Mapping


from sim.inputs.canonical import day_start_ts
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


