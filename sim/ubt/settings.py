"""The UBT's settings: the table schema, the windows (time or count mode), the caps, and the
sequence lengths they imply (SIM section 5.2).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Mapping

from pyspark.sql import types as T

from sim.config import ConfigError

log = logging.getLogger(__name__)


JOB = "build_ubt"
SECONDS_PER_DAY = 86400

BEHAVIOR_STRUCT = T.StructType([
    T.StructField("ts", T.LongType(), False),
    T.StructField("item_id", T.LongType(), False),
    T.StructField("behavior_type", T.StringType(), True),
])
UBT = T.StructType([
    T.StructField("user_id", T.LongType(), False),
    T.StructField("category_id", T.LongType(), False),
    # First date (yyyy-MM-dd) of the block of segment_days days the row's behaviors fall in; partition.
    T.StructField("segment", T.StringType(), False),
    # Newest first; ties by item_id then behavior_type descending (a total order: re-runs are identical).
    T.StructField("behaviors", T.ArrayType(BEHAVIOR_STRUCT, False), False),
    T.StructField("count", T.LongType(), False),  # uncapped number of the row's behaviors
    T.StructField("last_ts", T.LongType(), False),  # newest behavior of the row
    T.StructField("oldest_ts", T.LongType(), False),  # oldest behavior held in `behaviors`
])
UBT_COLUMNS = tuple(f.name for f in UBT.fields)
# One row per key: what the index holds for a (user, category), segments concatenated (ubt_view).
KEY_COLUMNS = tuple(c for c in UBT_COLUMNS if c != "segment")



class UbtStateError(RuntimeError):
    """The UBT is not at the state a run needs (e.g. D-1 was never built); the message says what to run."""


# --------------------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class Windows:
    """The ``windows:`` block of conf/pipeline.yaml (DESIGN.md "Data model": long/short windows)."""
    mode: str = "time"  # time | count
    long_days: int = 180
    short_days: int = 14
    long_count: int = 400
    short_count: int = 100
    segment_days: int = 7  # UBT rows hold a key's behaviors per block of this many days

    def __post_init__(self) -> None:
        if self.mode not in ("time", "count"):
            raise ConfigError(f"windows.mode must be 'time' or 'count', not {self.mode!r}")
        for name in ("long_days", "short_days", "long_count", "short_count", "segment_days"):
            if int(getattr(self, name)) <= 0:
                raise ConfigError(f"windows.{name} must be a positive integer")
        if self.short_days > self.long_days:
            raise ConfigError("windows.short_days must not exceed windows.long_days")

    @classmethod
    def from_conf(cls, cfg: Mapping) -> "Windows":
        block = dict(cfg.get("windows") or {})
        known = {k: block[k] for k in ("mode", "long_days", "short_days", "long_count", "short_count",
                                       "segment_days") if k in block}
        return cls(**{k: (v if k == "mode" else int(v)) for k, v in known.items()})


@dataclass(frozen=True)
class Caps:
    """The ``caps:`` block: fixed lengths of the samples' sequences and the optional UBT safety cap."""
    short_cap: int = 50
    hard_k: int = 200
    long_cap: int = 1000
    ubt_category_cap: int = 0  # 0 = off: the index keeps the whole long window

    def __post_init__(self) -> None:
        for name in ("short_cap", "hard_k", "long_cap"):
            if int(getattr(self, name)) <= 0:
                raise ConfigError(f"caps.{name} must be a positive integer")
        if self.ubt_category_cap < 0:
            raise ConfigError("caps.ubt_category_cap must be >= 0 (0 = off)")

    @classmethod
    def from_conf(cls, cfg: Mapping) -> "Caps":
        block = dict(cfg.get("caps") or {})
        return cls(**{k: int(block[k]) for k in ("short_cap", "hard_k", "long_cap", "ubt_category_cap")
                      if k in block})


def check_caps_fit(windows: Windows, caps: Caps) -> None:
    """Count mode stores exactly ``short_count`` and ``long_count`` behaviors: caps smaller than the
    counts would cut a sequence silently, so they are refused (time mode caps its windows by design)."""
    if windows.mode != "count":
        return
    problems = [f"caps.{cap}={getattr(caps, cap)} < windows.{count}={getattr(windows, count)}"
                for cap, count in (("short_cap", "short_count"), ("long_cap", "long_count"))
                if getattr(caps, cap) < getattr(windows, count)]
    if problems:
        raise ConfigError("count mode keeps the last short_count behaviors as the short sequence and the "
                          "long_count before them as the long one; " + ", ".join(problems)
                          + ": raise the caps or lower the counts")


def long_seq_len(windows: Windows, caps: Caps) -> int:
    """How many behaviors the long sequence holds at most (its padded length is ``caps.long_cap``)."""
    return caps.long_cap if windows.mode == "time" else windows.long_count


def short_seq_len(windows: Windows, caps: Caps) -> int:
    return caps.short_cap if windows.mode == "time" else windows.short_count


def recent_seq_len(windows: Windows, caps: Caps) -> int:
    """Newest behaviors of a user that the short and long sequences together can need: the long
    sequence in time mode (the short one is its prefix); short + long in count mode (disjoint)."""
    long_n, short_n = long_seq_len(windows, caps), short_seq_len(windows, caps)
    return long_n + short_n if windows.mode == "count" else max(long_n, short_n)


def ubt_category_cap(windows: Windows, caps: Caps) -> int:
    """Behaviors kept per (user, category) array; 0 = all of the long window.

    In count mode a key never needs more than the count-based sequences together: the newest N + M
    behaviors of a user hold at most N + M of any one category.
    """
    if windows.mode == "time":
        return caps.ubt_category_cap
    need = recent_seq_len(windows, caps)
    return min(need, caps.ubt_category_cap) if caps.ubt_category_cap else need


def ubt_metadata(windows: Windows, caps: Caps) -> dict:
    """What a UBT commit records beside job and date, so sim.samples can check it fits its windows."""
    return {"mode": windows.mode, "long_days": windows.long_days if windows.mode == "time" else None,
            "category_cap": ubt_category_cap(windows, caps), "segment_days": windows.segment_days}


