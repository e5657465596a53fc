"""The UBT's settings: the table schema, the windows (time or count mode), the caps, and the
sequence lengths they imply (SIM section 5.2).
"""
from __future__ import annotations

import logging

from pyspark.sql import types as T

from sim.config import Caps, Windows

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


# The windows and caps are blocks of the pipeline config (sim.config.pipeline); the lengths they imply:
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


def ubt_settings(windows: Windows, caps: Caps) -> dict:
    """The settings UBT rows depend on, by their config keys: recorded with every commit and compared
    on a re-run (sim.adapters.lineage). The time window in time mode; the counts in count mode (they
    size the per-key arrays, :func:`ubt_category_cap`); the block size and the safety cap in both."""
    out = {"windows.mode": windows.mode, "windows.segment_days": windows.segment_days,
           "caps.ubt_category_cap": caps.ubt_category_cap}
    if windows.mode == "time":
        out["windows.long_days"] = windows.long_days
    else:
        out.update({"windows.long_count": windows.long_count, "windows.short_count": windows.short_count})
    return out


def ubt_metadata(windows: Windows, caps: Caps) -> dict:
    """What a UBT commit records beside job and date, so sim.samples can check it fits its windows."""
    return {"mode": windows.mode, "long_days": windows.long_days if windows.mode == "time" else None,
            "category_cap": ubt_category_cap(windows, caps), "segment_days": windows.segment_days}


