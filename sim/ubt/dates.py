"""Date helpers of the nightly jobs: ISO dates, epoch days, segments of the UBT, window starts.
"""
from __future__ import annotations

import datetime as _dt
import logging

from pyspark.sql import Column
from pyspark.sql import functions as F

from sim.config import ConfigError, parse_date  # noqa: F401 - parse_date: the jobs' import of it
from sim.ubt.settings import SECONDS_PER_DAY, Windows

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------ dates
def shift_date(date: str, days: int) -> str:
    return (parse_date(date) + _dt.timedelta(days=days)).isoformat()


EPOCH = _dt.date(1970, 1, 1)


def epoch_day(date: str) -> int:
    """Days from 1970-01-01 to ``date``."""
    return (parse_date(date) - EPOCH).days


def epoch_day_col(dt: Column) -> Column:
    """:func:`epoch_day` of a ``yyyy-MM-dd`` column."""
    return F.datediff(F.to_date(dt), F.lit(EPOCH.isoformat()).cast("date"))


def day_start(date: str) -> int:
    """Epoch seconds of midnight UTC starting ``date``."""
    return epoch_day(date) * SECONDS_PER_DAY


def date_range(first: str, last: str) -> list[str]:
    a, b = parse_date(first), parse_date(last)
    if b < a:
        raise ConfigError(f"--backfill {first} is after --date {last}")
    return [(a + _dt.timedelta(days=i)).isoformat() for i in range((b - a).days + 1)]


def retention_first_date(windows: Windows, date: str) -> str | None:
    """The oldest behaviors date UBT(date) keeps (None in count mode: nothing expires)."""
    return shift_date(date, 1 - windows.long_days) if windows.mode == "time" else None


def segment_of(date: str, segment_days: int) -> str:
    """The first date of the block of ``segment_days`` days (aligned on 1970-01-01) holding ``date``."""
    days = epoch_day(date)
    return (EPOCH + _dt.timedelta(days=days - days % segment_days)).isoformat()


def segment_col(dt: Column, segment_days: int) -> Column:
    """:func:`segment_of` of a ``yyyy-MM-dd`` column."""
    days = epoch_day_col(dt)
    return F.date_format(F.date_from_unix_date((days - days % F.lit(segment_days)).cast("int")),
                         "yyyy-MM-dd")


def window_start_ts(windows: Windows, date: str) -> int | None:
    """Epoch seconds from which UBT(date) holds behaviors (None in count mode)."""
    first = retention_first_date(windows, date)
    return day_start(first) if first else None


