"""The samples table's contract, written once: its schema, the columns training reads, the errors and
the spec of the job (DESIGN.md "Data model").

One row is an impression with its label and three behavior sequences, each of at most a fixed cap:

- short_*  the short-term window (DIN branch), newest first, cap ``short_cap``
- hard_*   hard-search GSU output: the candidate category's behaviors in the long window, cap ``hard_k``
- long_*   the newest ``long_cap`` behaviors of the long window across categories (soft search, avg pooling)

Each sequence has ``*_items`` (item ids), ``*_cats`` (category ids) and ``*_gaps`` (time-gap buckets of
impression time minus behavior time), stored packed: one ``binary`` value per row holding only the real
elements as big-endian int32 (:mod:`sim.formats.packing` says why and how it is decoded; ids must be in
0..2**31-1, the job fails otherwise). ``short_len`` and ``hard_len`` are the real lengths; ``long_len``
is the uncapped number of behaviors in the long window (the stored long sequence holds
``min(long_len, long_cap)``), ``d_category`` the days since the user's last behavior in the candidate's
category (-1 if none). Id 0 and bucket 0 mean padding in the dense batches training reads.

Reading the sequences back as arrays: in Spark :func:`with_sequence_arrays` (or :func:`unpack_ids` on
one column), in pandas :func:`sim.formats.packing.unpack_frame`, in numpy
:func:`sim.formats.packing.unpack`.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from sim.config import ConfigError
from sim.config import Caps, PipelineConfig, Windows, check_caps_fit
from sim.config.pipeline import check_time_gaps_fit
from sim.ubt.settings import long_seq_len, recent_seq_len, short_seq_len
# The packed sequence format is defined once, in numpy (the training processes need no pyspark).
from sim.formats.packing import (ID_MAX, PACKED_COLUMNS, SEQ_FIELDS, SEQUENCES, seq_columns,  # noqa: F401
                                 unpack, unpack_frame)

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


SAMPLES = T.StructType(
    [T.StructField("impression_id", T.LongType()), T.StructField("user_id", T.LongType()),
     T.StructField("item_id", T.LongType()), T.StructField("category_id", T.LongType()),
     T.StructField("ts", T.LongType()), T.StructField("label", T.IntegerType()),
     T.StructField("p_click", T.DoubleType()), T.StructField("p_click_short", T.DoubleType()),
     T.StructField("dt", T.StringType())]
    + [T.StructField(c, T.BinaryType()) for s in SEQUENCES for c in seq_columns(s)]
    + [T.StructField(c, T.IntegerType()) for c in ("short_len", "hard_len", "long_len", "d_category")])
# Every column of the table, in order.
SAMPLES_COLUMNS = tuple(f.name for f in SAMPLES.fields)
# Columns training reads: the features and the label (a model reads the subset it needs).
TRAINING_COLUMNS = ("impression_id", "user_id", "item_id", "category_id", "ts", "label", "long_len",
                    "d_category") + tuple(c for s in SEQUENCES for c in seq_columns(s))
# The generator's click probabilities (null for imported logs): read for evaluation only, never trained on.
ORACLE_COLUMNS = ("p_click", "p_click_short")


def pack_ids(arr: Column) -> Column:
    """Spark: an array of integers in 0..ID_MAX as its stored bytes (big-endian int32), without a Python
    UDF: each element as 8 hex digits, joined, unhexed. Values outside the range would be cut silently
    here, so the samples job checks them first (:func:`sim.samples.transforms.to_samples`)."""
    return F.unhex(F.array_join(F.transform(arr, lambda x: F.lpad(F.hex(x), 8, "0")), ""))


def unpack_ids(packed: Column, dtype: str = "long") -> Column:
    """Spark: a stored sequence column back as ``array<dtype>`` (the real elements, no padding)."""
    n = (F.length(packed) / F.lit(4)).cast("int")
    values = F.transform(F.sequence(F.lit(0), n - 1),
                         lambda i: F.conv(F.hex(packed.substr(i * 4 + 1, F.lit(4))), 16, 10).cast(dtype))
    return F.when(n > 0, values).otherwise(F.array().cast(f"array<{dtype}>"))


def with_sequence_arrays(df: DataFrame) -> DataFrame:
    """``df`` (samples rows, any subset of the columns) with each stored sequence column replaced by its
    array: ``array<bigint>`` for ids and categories, ``array<int>`` for gap buckets, only the real
    elements. For reading and comparing rows; training decodes in numpy."""
    return df.select(*[unpack_ids(F.col(c), "int" if c.endswith("_gaps") else "long").alias(c)
                       if c in PACKED_COLUMNS else F.col(c) for c in df.columns])


class LeakError(RuntimeError):
    """A sequence holds a behavior at or after its impression's time."""


class SamplesInputError(RuntimeError):
    """An input the samples job needs is missing or does not fit; the message says what to run."""


def _pipeline_default(key: str):
    return PipelineConfig.model_fields[key].get_default(call_default_factory=True)


@dataclass(frozen=True)
class SampleSpec:
    """The settings the samples job reads; defaults are the pipeline config's (:class:`PipelineConfig`)."""
    windows: Windows
    caps: Caps
    time_gap_buckets: int = _pipeline_default("time_gap_buckets")
    # Days back a date can be rebuilt: the UBT and samples tables keep their versions this long.
    backfill_days: int = _pipeline_default("retention").backfill_days
    # r time-gap buckets per doubling of the hours (sim.samples.transforms.time_gap_bucket); 1 = log2.
    time_gap_per_octave: int = _pipeline_default("time_gap_per_octave")

    def __post_init__(self) -> None:
        if self.time_gap_buckets < 2:
            raise ConfigError("time_gap_buckets must be >= 2 (bucket 0 is padding)")
        if self.time_gap_per_octave < 1:
            raise ConfigError("time_gap_per_octave must be >= 1")
        if self.backfill_days < 0:
            raise ConfigError("retention.backfill_days must be >= 0")
        problem = check_caps_fit(self.windows, self.caps)
        if problem:
            raise ConfigError(problem)
        problem = check_time_gaps_fit(self.windows, self.time_gap_buckets, self.time_gap_per_octave)
        if problem and self.windows.mode == "time":
            raise ConfigError(problem)
        if problem:  # count mode: gaps are unbounded, the last bucket is "older than" by design
            log.warning("count mode: gaps from %.1f days on share the last time-gap bucket (%s)",
                        self.last_bucket_hours / 24, problem)

    @classmethod
    def from_conf(cls, cfg: PipelineConfig) -> "SampleSpec":
        return cls(cfg.windows, cfg.caps, cfg.time_gap_buckets, cfg.retention.backfill_days,
                   cfg.time_gap_per_octave)

    @property
    def sizes(self) -> dict[str, int]:
        """What a model must fit, recorded with every samples commit and checked before training
        (:func:`sim.training.experiment.check_model_fits`): the caps, the time-gap ids' range and their
        scale (``time_gap_per_octave``: one model must not mix gaps bucketed at two scales)."""
        return {"short_cap": self.caps.short_cap, "hard_k": self.caps.hard_k, "long_cap": self.caps.long_cap,
                "time_gap_buckets": self.time_gap_buckets, "time_gap_per_octave": self.time_gap_per_octave}

    @property
    def settings(self) -> dict:
        """The settings the samples' rows depend on, by their config keys: recorded with every samples
        commit and compared when a committed date is run again (sim.adapters.lineage): the windows of
        the mode, the caps, the time-gap buckets and their scale."""
        w = self.windows
        c = self.caps
        out = {"windows.mode": w.mode, "caps.short_cap": c.short_cap, "caps.hard_k": c.hard_k,
               "caps.long_cap": c.long_cap, "time_gap_buckets": self.time_gap_buckets,
               "time_gap_per_octave": self.time_gap_per_octave}
        if w.mode == "time":
            out.update({"windows.long_days": w.long_days, "windows.short_days": w.short_days})
        else:
            out.update({"windows.long_count": w.long_count, "windows.short_count": w.short_count})
        return out

    @property
    def last_bucket_hours(self) -> int:
        """The whole hours from which on a gap falls in the last bucket (time_gap_index >= buckets - 2)."""
        target, r = 1 << (self.time_gap_buckets - 2), self.time_gap_per_octave
        x = max(1, round(2 ** ((self.time_gap_buckets - 2) / r)))  # the integer r-th root, then exact
        while x ** r < target:
            x += 1
        while x > 1 and (x - 1) ** r >= target:
            x -= 1
        return x - 1

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


