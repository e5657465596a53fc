"""An experiment's configuration and data: load and check the config, resolve the samples snapshot.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import logging
import os
from typing import Sequence

import numpy as np

from sim.config import ConfigError, apply_overrides, deep_merge, load_yaml
from sim.adapters.delta_io import MissingTableError

log = logging.getLogger("sim.train")

SPLITS = ("train", "valid", "test")


# ---------------------------------------------------------------------------------------------- config
def load_experiment(config_path: str | os.PathLike, expid: str, overrides: Sequence[str] = ()) -> dict:
    """``Base`` merged with the block of ``expid`` and the ``--set`` overrides, validated."""
    raw = load_yaml(config_path)
    if "Base" not in raw:
        raise ConfigError(f"{config_path} has no `Base` block")
    known = sorted(k for k in raw if k != "Base")
    if expid not in known:
        raise ConfigError(f"unknown expid {expid!r} in {config_path}; known: {', '.join(known)}")
    cfg = deep_merge(raw["Base"], raw[expid] or {})
    cfg = apply_overrides(cfg, overrides)
    cfg["expid"] = expid
    validate_config(cfg)
    return cfg


def _date_range(cfg: dict, key: str) -> tuple[str, str]:
    value = cfg.get(key)
    if not (isinstance(value, (list, tuple)) and len(value) == 2):
        raise ConfigError(f"{key} must be [first, last] dates, got {value!r}")
    try:
        first, last = (_dt.date.fromisoformat(str(v)) for v in value)
    except ValueError as e:
        raise ConfigError(f"{key}: {e}; use YYYY-MM-DD") from None
    if first > last:
        raise ConfigError(f"{key} is empty: first date {first} is after last date {last}; swap them")
    return first.isoformat(), last.isoformat()


def validate_config(cfg: dict) -> None:
    """Checks that need no data: model name, date ranges in train < valid < test order, training numbers."""
    from sim.models import MODEL_NAMES
    name = cfg.get("model", {}).get("name")
    if name not in MODEL_NAMES:
        raise ConfigError(f"unknown model {name!r}; known models: {', '.join(MODEL_NAMES)}")
    if "eval_dates" in cfg:
        raise ConfigError("eval_dates is split into valid_dates (picks the epoch) and test_dates (the "
                          "reported figures): set those two instead")
    ranges = [_date_range(cfg, f"{split}_dates") for split in SPLITS]
    for (a, ra), (b, rb) in zip(zip(SPLITS, ranges), list(zip(SPLITS, ranges))[1:]):
        if ra[1] >= rb[0]:
            raise ConfigError(f"{a}_dates {ra[0]}..{ra[1]} must end before {b}_dates {rb[0]}..{rb[1]} "
                              "start (train, then validation, then test, without overlap)")
    t = cfg.get("train", {})
    for key in ("epochs", "batch_size", "eval_batch_size"):
        if int(t.get(key, 1)) < 1:
            raise ConfigError(f"train.{key} must be at least 1, got {t.get(key)}")
    if int(t.get("patience", 0)) < 0:
        raise ConfigError(f"train.patience must be >= 0 (0 = train every epoch), got {t.get('patience')}")


# ------------------------------------------------------------------------------------------------ data
@dataclasses.dataclass
class DataManifest:
    """What a run reads: the samples table version and the files of its snapshot per split."""
    samples_path: str
    samples_version: int
    files: dict[str, list[tuple[str, int]]]  # split -> (path, rows)

    def paths(self, split: str) -> list[str]:
        return [p for p, _ in self.files[split]]

    def rows(self, split: str) -> int:
        return sum(n for _, n in self.files[split])

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "DataManifest":
        d = json.loads(text)
        d["files"] = {k: [tuple(x) for x in v] for k, v in d["files"].items()}
        return cls(**d)


def resolve_data(cfg: dict) -> DataManifest:
    """List the samples snapshot's files for each split's dates, from the Delta log (no JVM)."""
    from sim.adapters import delta_io

    path = delta_io.table_path(cfg["lakehouse"], cfg.get("samples_table", "samples"))
    hint = "build it with `python jobs/build_samples.py --date D` (or check `lakehouse` in the config)"
    try:
        snap = delta_io.log_snapshot(path)
    except MissingTableError as e:
        raise MissingTableError(f"{e}; {hint}") from None
    files = {}
    for split in SPLITS:
        first, last = _date_range(cfg, f"{split}_dates")
        found = snap.between(first, last)
        if not found:
            raise ConfigError(f"no samples for {split}_dates {first}..{last} in {path} (version "
                              f"{snap.version}); dates present: {', '.join(snap.dates) or 'none'}")
        files[split] = [(f.path, f.num_rows) for f in found]
    return DataManifest(path, snap.version, files)


def load_item_topics(lakehouse: str):
    """The synthetic catalog's item -> topic tensor for the diagnostics, or None without the table."""
    from sim.adapters import delta_io
    from sim.training.diagnostics import item_topic_lookup
    from sim.inputs.generator.settings import ITEM_TOPICS_TABLE

    path = delta_io.table_path(lakehouse, ITEM_TOPICS_TABLE)
    if not os.path.isdir(os.path.join(path, "_delta_log")):
        return None
    from deltalake import DeltaTable
    t = DeltaTable(path).to_pyarrow_table(columns=["item_id", "topic_id"])
    return item_topic_lookup(t.column("item_id").to_numpy(), t.column("topic_id").to_numpy())


def _to_tensors(batch: dict[str, np.ndarray]):
    import torch
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in batch.items()}


