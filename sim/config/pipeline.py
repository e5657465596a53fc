"""The typed schema of ``conf/pipeline.yaml``: the lakehouse, Spark, the UBT's windows and the samples'
caps, retention, validation, and the synthetic generator with its hidden click model.

:func:`load_pipeline_conf` reads the YAML, applies ``--set`` overrides and returns a
:class:`PipelineConfig`; the jobs read its attributes (``cfg.windows.long_days``), never raw mappings.
"""
from __future__ import annotations

import datetime as _dt
import os
from pathlib import Path
from typing import Annotated, Any, Iterable, Literal

from pydantic import AliasChoices, BeforeValidator, Field, NonNegativeInt, PositiveInt, model_validator

from sim.config.base import PROJECT_ROOT, IsoDate, Settings, apply_overrides, load_yaml

DEFAULT_PIPELINE_CONF = PROJECT_ROOT / "conf" / "pipeline.yaml"
DAY = 86400
_RECENT_BURST_LEAD_DAYS = 10  # the generator's short-term bursts start this many days before the end


class Windows(Settings):
    """The ``windows:`` block (DESIGN.md "Data model": the long and short windows of a sample)."""
    section = "windows"
    mode: Literal["time", "count"] = "time"
    long_days: PositiveInt = 180
    short_days: PositiveInt = 14
    long_count: PositiveInt = 400
    short_count: PositiveInt = 50
    segment_days: PositiveInt = 7  # UBT rows hold a key's behaviors per block of this many days

    @model_validator(mode="after")
    def _short_within_long(self) -> "Windows":
        if self.short_days > self.long_days:
            raise ValueError(f"short_days={self.short_days} must not exceed long_days={self.long_days}")
        return self


class Caps(Settings):
    """The ``caps:`` block: fixed lengths of the samples' sequences and the optional UBT safety cap."""
    section = "caps"
    short_cap: PositiveInt = 50
    hard_k: PositiveInt = 200
    long_cap: PositiveInt = 1000
    ubt_category_cap: NonNegativeInt = 0  # 0 = off: the index keeps the whole long window


def check_caps_fit(windows: Windows, caps: Caps) -> str | None:
    """Count mode stores exactly ``short_count`` and ``long_count`` behaviors: caps smaller than the
    counts would cut a sequence silently, so they are refused (time mode caps its windows by design).
    Returns what is wrong, or None."""
    if windows.mode != "count":
        return None
    problems = [f"caps.{cap}={getattr(caps, cap)} < windows.{count}={getattr(windows, count)}"
                for cap, count in (("short_cap", "short_count"), ("long_cap", "long_count"))
                if getattr(caps, cap) < getattr(windows, count)]
    if not problems:
        return None
    return ("count mode keeps the last short_count behaviors as the short sequence and the long_count "
            "before them as the long one; " + ", ".join(problems) + ": raise the caps or lower the counts")


def time_gap_index(hours: int, per_octave: int = 1) -> int:
    """floor(r * log2(1 + hours)) in exact integer arithmetic (= floor(log2((1 + hours) ** r))): the
    bucket index a gap of ``hours`` whole hours gets before the cap (sim.samples.transforms.time_gap_bucket)."""
    return ((hours + 1) ** per_octave).bit_length() - 1


def check_time_gaps_fit(windows: Windows, time_gap_buckets: int, per_octave: int) -> str | None:
    """Whether the long window's gaps get buckets of their own: a gap of h hours has bucket
    1 + min(time_gap_buckets - 2, time_gap_index(h, r)), so when the window's oldest gap (long_days * 24
    - 1 hours) has an index beyond time_gap_buckets - 2, the oldest part of the window would share the
    last bucket, losing the resolution ``time_gap_per_octave`` asks for. Time mode refuses that (its gaps
    never exceed the window; the defaults, 180 days at r = 1 in 64 buckets, use 13 of them). Count mode
    has no bound on a gap, so there the last bucket holds every older gap by design, and this only
    warns (:class:`sim.samples.contract.SampleSpec`). Returns what is wrong, or None."""
    hours = windows.long_days * 24 - 1
    top = time_gap_index(hours, per_octave)
    if top <= time_gap_buckets - 2:
        return None
    fits = [r for r in range(1, per_octave) if time_gap_index(hours, r) <= time_gap_buckets - 2]
    return (f"time_gap_per_octave={per_octave} gives gaps of the {windows.long_days}-day long window bucket "
            f"ids up to {top + 1} but time_gap_buckets={time_gap_buckets} holds ids up to {time_gap_buckets - 1} "
            f"(older gaps would share the last one): set time_gap_buckets >= {top + 2}"
            + (f" or time_gap_per_octave <= {fits[-1]}" if fits else ""))


def _spark_value(value: Any) -> str:
    """Spark settings are strings; YAML hands over numbers and booleans too."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float, str)):
        return str(value)
    raise ValueError(f"a Spark setting must be a string, number or boolean, got {value!r}")


def _default_spark_conf() -> dict[str, str]:
    """``spark.conf`` of conf/pipeline.yaml: settings for a two-core machine (``spark.driver.memory``
    applies only where our process launches the JVM; sim.adapters.spark warns otherwise)."""
    return {"spark.sql.shuffle.partitions": "4", "spark.driver.memory": "4g", "spark.sql.session.timeZone": "UTC",
            "spark.ui.enabled": "false", "spark.sql.adaptive.enabled": "true"}


class SparkSettings(Settings):
    """The ``spark:`` block: the master (``--master`` or SIM_SPARK_MASTER override it) and Spark conf."""
    section = "spark"
    master: str = "local[2]"
    app_name: str = "sim-pipeline"
    conf: dict[str, Annotated[str, BeforeValidator(_spark_value)]] = Field(default_factory=_default_spark_conf)


class Retention(Settings):
    """Days back a date can be rebuilt: ubt and samples keep their log and removed files this long."""
    section = "retention"
    backfill_days: NonNegativeInt = 30


class ValidationSettings(Settings):
    """Input validation: the share of rejected rows above which an ingest fails."""
    section = "validation"
    max_reject_ratio: float = Field(0.05, ge=0.0, le=1.0)


class TruthConfig(Settings):
    """The generator's hidden click model:
    ``sigmoid(bias + long_term * LT + short_term * ST + favorite_item * FAV)``."""
    section = "generator.truth"
    bias: float = -2.5
    long_term: float = 3.0
    short_term: float = 3.0
    favorite_item: float = 1.0
    long_term_decay_days: float = Field(60.0, gt=0)
    short_term_days: PositiveInt = 14
    short_term_saturation: float = Field(3.0, gt=0)


class GeneratorConfig(Settings):
    """The ``generator:`` block: size and behavior of the synthetic logs (sim.inputs.generator)."""
    section = "generator"
    seed: int = 7
    end_date: IsoDate = "2024-07-01"
    history_days: PositiveInt = 200
    impression_days: PositiveInt = 4
    users: PositiveInt = 3000
    items: PositiveInt = 50000
    categories: PositiveInt = 200
    topics: PositiveInt = 40
    cross_category_share: float = Field(0.5, ge=0.0, le=1.0)
    mean_behaviors_per_user: float = 250
    min_behaviors_per_user: PositiveInt = 10
    max_behaviors_per_user: PositiveInt = 600
    heavy_users: NonNegativeInt = 2
    tail_index: float = Field(1.5, gt=1.0, description="Pareto tail index; > 1 for a finite mean")
    interests_min: PositiveInt = 2
    interests_max: PositiveInt = 10
    revisit_min_days: PositiveInt = 21
    revisit_max_days: PositiveInt = 60
    share_long_term: float = Field(0.6, ge=0.0, le=1.0)
    share_burst: float = Field(0.25, ge=0.0, le=1.0)
    burst_size: PositiveInt = 20
    repeat_prob: float = Field(0.5, ge=0.0, le=1.0)
    favorites_per_category: PositiveInt = 5
    impressions_per_user_day: PositiveInt = 16
    partitions: NonNegativeInt = 0  # 0 = one per ~500k behaviors, at least 2
    # Item styles (relevance within a category, sim.inputs.generator): 0 = off, today's rows exactly.
    styles_per_category: NonNegativeInt = 0
    style_focus: float = Field(0.8, ge=0.0, le=1.0,
                               description="a lasting interest's behavior is of its style with this probability")
    truth: TruthConfig = Field(default_factory=TruthConfig)

    @model_validator(mode="after")
    def _consistent(self) -> "GeneratorConfig":
        problems = []
        if self.items < self.categories:
            problems.append("need items >= categories")
        if self.topics > self.categories:
            problems.append("need topics <= categories")
        if self.history_days < self.impression_days + _RECENT_BURST_LEAD_DAYS + 5:
            problems.append(f"history_days must be >= impression_days + {_RECENT_BURST_LEAD_DAYS + 5}")
        if not self.min_behaviors_per_user <= self.mean_behaviors_per_user <= self.max_behaviors_per_user:
            problems.append("need min_behaviors_per_user <= mean_behaviors_per_user <= max_behaviors_per_user")
        if self.heavy_users > self.users:
            problems.append("heavy_users must be <= users")
        if not 15 <= self.revisit_min_days <= self.revisit_max_days:
            problems.append("need 15 <= revisit_min_days <= revisit_max_days (revisits beyond the 14-day window)")
        if self.share_long_term + self.share_burst > 1:
            problems.append("share_long_term + share_burst must be <= 1")
        if self.interests_min > self.interests_max:
            problems.append("need interests_min <= interests_max")
        if self.styles_per_category > self.items // self.categories:
            problems.append("need styles_per_category <= items / categories (each style needs items)")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    # Derived quantities -------------------------------------------------------------------------
    @property
    def items_per_category(self) -> int:
        return self.items // self.categories

    @property
    def first_date(self) -> str:
        return (_dt.date.fromisoformat(self.end_date) - _dt.timedelta(days=self.history_days - 1)).isoformat()

    @property
    def start_ts(self) -> int:
        """Epoch seconds of 00:00 UTC of the first history day."""
        d = _dt.date.fromisoformat(self.first_date)
        return int(_dt.datetime(d.year, d.month, d.day, tzinfo=_dt.timezone.utc).timestamp())

    @property
    def first_impression_date(self) -> str:
        return (_dt.date.fromisoformat(self.end_date)
                - _dt.timedelta(days=self.impression_days - 1)).isoformat()

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


class LogsSource(Settings):
    """One table of ``nightly.import``: the arguments of :class:`sim.inputs.own_logs.LogSource`."""
    section = "nightly.import"
    location: str  # a path ({date} = the run's date) or a Spark table's name
    input_format: Literal["parquet", "csv", "json", "delta", "table"] | None = None  # None: from the path
    map: dict[str, str] = Field(default_factory=dict)  # canonical column -> source column or SQL expression
    ts_unit: Literal["s", "ms", "us"] | None = None
    ts_format: str | None = None
    where: str | None = None


class NightlyImport(Settings):
    """``nightly.import``: the day's own logs jobs/nightly.py imports before the UBT and the samples."""
    section = "nightly.import"
    behaviors: LogsSource | None = None
    impressions: LogsSource | None = None
    allow_empty: bool = False


class NightlyExport(Settings):
    """``nightly.export``: the serving store jobs/nightly.py exports UBT(D) into after the samples
    (sim.serving.export; the ``--store`` of jobs/export_ubt.py)."""
    section = "nightly.export"
    store: str  # the embedded store's file (created if missing), or redis://HOST:PORT/DB


def _off_when_false(value: Any) -> Any:
    return None if value is False else value


class NightlySettings(Settings):
    """The ``nightly:`` block of jobs/nightly.py; ``import`` and ``export`` are off (null or false) by
    default: the day's logs are loaded, and the serving store fed, by other means."""
    section = "nightly"
    # Read as ``import`` (a Python keyword) or ``import_`` (how model_dump writes it back).
    import_: NightlyImport | None = Field(None, validation_alias=AliasChoices("import", "import_"))
    export: Annotated[NightlyExport | None, BeforeValidator(_off_when_false)] = None


class PipelineConfig(Settings):
    """``conf/pipeline.yaml``: every setting of the nightly jobs and the generator, with defaults."""
    lakehouse: str = "./lakehouse"
    spark: SparkSettings = Field(default_factory=SparkSettings)
    windows: Windows = Field(default_factory=Windows)
    caps: Caps = Field(default_factory=Caps)
    time_gap_buckets: int = Field(64, ge=2, description="bucket 0 is padding; log2 of hours")
    time_gap_per_octave: PositiveInt = Field(
        1, description="r buckets per doubling of the hours: 1 + floor(r * log2(1 + hours)); 1 = log2")
    retention: Retention = Field(default_factory=Retention)
    validation: ValidationSettings = Field(default_factory=ValidationSettings)
    generator: GeneratorConfig = Field(default_factory=GeneratorConfig)
    nightly: NightlySettings = Field(default_factory=NightlySettings)

    @model_validator(mode="after")
    def _caps_hold_counts(self) -> "PipelineConfig":
        problem = check_caps_fit(self.windows, self.caps)
        if problem:
            raise ValueError(problem)
        problem = self.windows.mode == "time" and check_time_gaps_fit(self.windows, self.time_gap_buckets,
                                                                      self.time_gap_per_octave)
        if problem:
            raise ValueError(problem)
        return self


def load_pipeline_conf(path: str | os.PathLike | None = None, overrides: Iterable[str] | None = None,
                       lakehouse: str | None = None) -> PipelineConfig:
    """The pipeline config (conf/pipeline.yaml by default) with ``--set`` overrides and an optional
    lakehouse root, parsed and checked: a bad key or value raises ConfigError naming it."""
    path = Path(path or DEFAULT_PIPELINE_CONF)
    raw = apply_overrides(load_yaml(path), overrides)
    if lakehouse:
        raw["lakehouse"] = lakehouse
    return PipelineConfig.parse(raw, where=str(path))
