"""The samples table's contract, written once: its schema, the columns training reads, the errors and
the spec of the job (DESIGN.md "Data model").

One row is an impression with its label and three behavior sequences, each padded with 0 to a fixed cap:

- short_*  the short-term window (DIN branch), newest first, cap ``short_cap``
- hard_*   hard-search GSU output: the candidate category's behaviors in the long window, cap ``hard_k``
- long_*   the newest ``long_cap`` behaviors of the long window across categories (soft search, avg pooling)

Each sequence has ``*_items`` (item ids), ``*_cats`` (category ids) and ``*_gaps`` (time-gap buckets of
impression time minus behavior time) (``short_len`` and ``hard_len`` give the real lengths). Id 0 and bucket 0 mean padding.
``long_len`` is the uncapped number of behaviors in the long window, ``d_category`` the days since the
user's last behavior in the candidate's category (-1 if none).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

from pyspark.sql import types as T

from sim.config import ConfigError
from sim.config import Caps, PipelineConfig, Windows, check_caps_fit
from sim.ubt.settings import long_seq_len, recent_seq_len, short_seq_len

log = logging.getLogger(__name__)


JOB = "build_samples"
SECONDS_PER_HOUR = 3600

SEQ_STRUCT = T.StructType([
    T.StructField("ts", T.LongType(), True),
    T.StructField("item_id", T.LongType(), True),
    T.StructField("category_id", T.LongType(), True),
])
_SEQ_ARRAY = T.ArrayType(SEQ_STRUCT, True)

# Scalars of an impression as the job reads them from ``impressions``.
SAMPLES_SCALARS_IN = ("impression_id", "user_id", "item_id", "category_id", "ts", "label", "p_click",
                      "p_click_short", "dt")
SEQUENCES = ("short", "hard", "long")
SEQ_FIELDS = ("items", "cats", "gaps")


def seq_columns(name: str) -> tuple[str, str, str]:
    """Column names (items, cats, gaps) of one sequence of the samples table."""
    return tuple(f"{name}_{f}" for f in SEQ_FIELDS)  # type: ignore[return-value]


SAMPLES = T.StructType(
    [T.StructField("impression_id", T.LongType()), T.StructField("user_id", T.LongType()),
     T.StructField("item_id", T.LongType()), T.StructField("category_id", T.LongType()),
     T.StructField("ts", T.LongType()), T.StructField("label", T.IntegerType()),
     T.StructField("p_click", T.DoubleType()), T.StructField("p_click_short", T.DoubleType()),
     T.StructField("dt", T.StringType())]
    + [T.StructField(c, T.ArrayType(T.IntegerType() if c.endswith("_gaps") else T.LongType(), True))
       for s in SEQUENCES for c in seq_columns(s)]
    + [T.StructField(c, T.IntegerType()) for c in ("short_len", "hard_len", "long_len", "d_category")])
# Every column of the table, in order.
SAMPLES_COLUMNS = tuple(f.name for f in SAMPLES.fields)
# Columns training reads: the features and the label (a model reads the subset it needs).
TRAINING_COLUMNS = ("impression_id", "user_id", "item_id", "category_id", "ts", "label", "long_len",
                    "d_category") + tuple(c for s in SEQUENCES for c in seq_columns(s))
# The generator's click probabilities (null for imported logs): read for evaluation only, never trained on.
ORACLE_COLUMNS = ("p_click", "p_click_short")


class LeakError(RuntimeError):
    """A sequence holds a behavior at or after its impression's time."""


class SamplesInputError(RuntimeError):
    """An input the samples job needs is missing or does not fit; the message says what to run."""


@dataclass(frozen=True)
class SampleSpec:
    windows: Windows
    caps: Caps
    time_gap_buckets: int = 64
    # Days back a date can be rebuilt: the UBT and samples tables keep their versions this long.
    backfill_days: int = 30

    def __post_init__(self) -> None:
        if self.time_gap_buckets < 2:
            raise ConfigError("time_gap_buckets must be >= 2 (bucket 0 is padding)")
        if self.backfill_days < 0:
            raise ConfigError("retention.backfill_days must be >= 0")
        problem = check_caps_fit(self.windows, self.caps)
        if problem:
            raise ConfigError(problem)

    @classmethod
    def from_conf(cls, cfg: PipelineConfig) -> "SampleSpec":
        return cls(cfg.windows, cfg.caps, cfg.time_gap_buckets, cfg.retention.backfill_days)

    @property
    def sizes(self) -> dict[str, int]:
        """What a model must fit, recorded with every samples commit and checked before training
        (:func:`sim.training.experiment.check_model_fits`)."""
        return {"short_cap": self.caps.short_cap, "hard_k": self.caps.hard_k, "long_cap": self.caps.long_cap,
                "time_gap_buckets": self.time_gap_buckets}

    @property
    def long_n(self) -> int:
        return long_seq_len(self.windows, self.caps)

    @property
    def short_n(self) -> int:
        return short_seq_len(self.windows, self.caps)

    @property
    def recent_n(self) -> int:
        """Newest UBT behaviors per user the long and short sequences can ever need."""
        return recent_seq_len(self.windows, self.caps)


