"""The typed schema of ``conf/experiments.yaml``: ``Base`` merged with one experiment's block.

An experiment names the samples it trains on (``lakehouse`` + ``samples_table``, optionally pinned to
``samples_version``), splits their dates three ways, and holds the model (:class:`ModelSettings`: its
registry name and :class:`sim.models.config.ModelConfig`) and the training settings. Training reads the
validated values as a plain mapping (:func:`load_experiment`), which is also what MLflow logs.
"""
from __future__ import annotations

import datetime as _dt
import os
from typing import Any, Literal, Sequence

from pydantic import Field, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, field_validator, \
    model_validator

from sim.config.base import ConfigError, IsoDate, Settings, apply_overrides, deep_merge, load_yaml
from sim.models.config import ModelConfig

SPLITS = ("train", "valid", "test")


class ModelSettings(ModelConfig):
    """The ``model:`` block: the registry name (``sim.models.MODEL_NAMES``) and the model's sizes."""
    name: str = Field(description="registry name of the model")

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        from sim.models import MODEL_NAMES
        if name not in MODEL_NAMES:
            raise ValueError(f"unknown model {name!r}; known models: {', '.join(MODEL_NAMES)}")
        return name


class TrainSettings(Settings):
    """The ``train:`` block.

    Per-process semantics (Horovod): ``batch_size`` is the rows of one process's batch, so an optimizer
    step with N processes (``--np N``) averages the gradients of ``N * batch_size`` rows and an epoch takes
    1/N of the steps. ``lr_scaling`` says what follows from that (:func:`sim.training.optim.lr_schedule`):
    ``none`` (the default) keeps ``lr`` and counts the decay in optimizer steps whatever N is (runs with
    other N are other experiments, and sim.compare keeps them apart); ``linear`` is Horovod's rule: the
    rate is ``lr * N``, reached by a linear warm-up from ``lr`` over ``lr_warmup_epochs`` epochs, and the
    decay counts rows in units of ``batch_size`` (``N`` per step), so it follows the epochs as with one
    process. With one process both train exactly alike."""
    seed: int = 1
    epochs: PositiveInt = 4
    batch_size: PositiveInt = Field(256, description="rows per batch of each process; one optimizer step "
                                                     "averages batch_size * processes rows")
    lr: PositiveFloat = 0.004
    lr_decay_rate: float = Field(0.9, gt=0.0, le=1.0, description="lr * rate ** (step / lr_decay_steps)")
    lr_decay_steps: PositiveFloat = Field(1000, description="optimizer steps (lr_scaling none) or batches of "
                                                            "batch_size rows (linear) per decay by lr_decay_rate")
    lr_scaling: Literal["none", "linear"] = Field(
        "none", description="none: lr whatever the processes; linear: lr * processes after a warm-up "
                            "(Horovod's rule), the decay counted in rows")
    lr_warmup_epochs: NonNegativeFloat = Field(1.0, description="with lr_scaling linear: epochs of the "
                                                                "linear warm-up from lr to lr * processes")
    weight_decay: NonNegativeFloat = 0.0
    eval_batch_size: PositiveInt = 1024
    checkpoint_dir: str = "./checkpoints"
    threads: NonNegativeInt = 0
    patience: NonNegativeInt = 1
    length_buckets: NonNegativeInt = 16
    loader_workers: PositiveInt = Field(3, description="row groups read ahead by threads (batches unchanged)")
    shuffle_groups: PositiveInt = Field(4, description="row groups whose rows are shuffled together, so a "
                                                       "batch mixes dates and partitions (held in memory at once)")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="auto: the GPU of each rank's local rank when torch sees one, else the CPU "
                            "(sim.training.device)")


class DateRange(Settings):
    """Inclusive ``[first, last]`` of ``samples.dt``."""
    first: IsoDate
    last: IsoDate

    @model_validator(mode="before")
    @classmethod
    def _pair(cls, value: Any) -> Any:
        if isinstance(value, (list, tuple)) and len(value) == 2:
            return {"first": value[0], "last": value[1]}
        if isinstance(value, dict):
            return value
        raise ValueError(f"must be [first, last] dates (YYYY-MM-DD), got {value!r}")

    @model_validator(mode="after")
    def _ordered(self) -> "DateRange":
        if self.first > self.last:
            raise ValueError(f"[first, last] is empty: first date {self.first} is after last date {self.last}; swap them")
        return self


class ExperimentConfig(Settings):
    expid: str
    experiment: str = Field(description="MLflow experiment name")
    dataset: str | None = Field(None, description="a label of the data shown by sim.compare beside the "
                                                  "dataset it derives from the samples' commits (never instead)")
    tracking_uri: str | None = None
    lakehouse: str
    samples_table: str = "samples"
    samples_version: NonNegativeInt | None = Field(None, description="pin the samples snapshot (time travel)")
    train_dates: DateRange
    valid_dates: DateRange
    test_dates: DateRange
    model: ModelSettings
    train: TrainSettings = Field(default_factory=TrainSettings)

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, value: Any) -> Any:
        if isinstance(value, dict) and "eval_dates" in value:
            raise ValueError("eval_dates is split into valid_dates (picks the epoch) and test_dates (the "
                             "reported figures): set those two instead")
        return value

    @model_validator(mode="after")
    def _splits_in_order(self) -> "ExperimentConfig":
        ranges = [(s, getattr(self, f"{s}_dates")) for s in SPLITS]
        for (a, ra), (b, rb) in zip(ranges, ranges[1:]):
            if ra.last >= rb.first:
                raise ValueError(f"{a}_dates {ra.first}..{ra.last} must end before {b}_dates {rb.first}..{rb.last} "
                                 "start (train, then validation, then test, without overlap)")
        return self

    def as_mapping(self) -> dict:
        """Plain values for training and MLflow: dates as ``[first, last]`` ISO strings."""
        out = self.model_dump(mode="json")
        for s in SPLITS:
            out[f"{s}_dates"] = [out[f"{s}_dates"]["first"], out[f"{s}_dates"]["last"]]
        return out


def load_experiment(config_path: str | os.PathLike, expid: str, overrides: Sequence[str] = ()) -> dict:
    """``Base`` merged with the block of ``expid`` and the ``--set`` overrides, parsed and checked: every
    value is refused here, naming its key, before any data is read or any worker starts."""
    raw = load_yaml(config_path)
    if "Base" not in raw:
        raise ConfigError(f"{config_path} has no `Base` block")
    known = sorted(k for k in raw if k != "Base")
    if expid not in known:
        raise ConfigError(f"unknown expid {expid!r} in {config_path}; known: {', '.join(known)}")
    cfg = apply_overrides(deep_merge(raw["Base"], raw[expid] or {}), overrides)
    cfg["expid"] = expid
    return ExperimentConfig.parse(cfg, where=f"{config_path} (expid {expid})").as_mapping()


def check_model_builds(cfg: dict) -> None:
    """Rules across a model's keys and its parts (``gsu_alpha`` needs soft search, MIMN's
    ``mimn_miu_topk <= mimn_slots``) are the parts' own: build the model once, on the CPU, before any
    worker starts, and report what it refuses as a configuration error."""
    from sim.models import build_model
    try:
        build_model(cfg["model"]["name"], {k: v for k, v in cfg["model"].items() if k != "name"})
    except ValueError as e:
        raise ConfigError(f"model ({cfg['model']['name']}): {e}") from None


def date_range(cfg: dict, split: str) -> tuple[str, str]:
    """``(first, last)`` ISO dates of a split of a loaded experiment."""
    first, last = cfg[f"{split}_dates"]
    return _dt.date.fromisoformat(first).isoformat(), _dt.date.fromisoformat(last).isoformat()
