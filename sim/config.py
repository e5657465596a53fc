"""YAML configuration with dotted ``--set key=value`` overrides (one loader for jobs and training)."""
from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PIPELINE_CONF = PROJECT_ROOT / "conf" / "pipeline.yaml"


class ConfigError(ValueError):
    """A configuration that cannot work; the message says what to change."""


def load_yaml(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    with open(path) as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return data


def deep_merge(base: Mapping, override: Mapping) -> dict:
    """Return ``base`` updated recursively with ``override`` (neither is modified)."""
    out = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def set_dotted(cfg: dict, key: str, value: Any) -> None:
    """Set ``cfg['a']['b'] = value`` for ``key='a.b'``, creating levels as needed.

    Spark conf keys hold dots themselves, so at each level the longest dotted prefix that already
    names a mapping is followed (``spark.conf.spark.sql.shuffle.partitions`` reaches the Spark key).
    """
    parts = key.split(".")
    node = cfg
    i = 0
    while i < len(parts) - 1:
        for j in range(len(parts) - 1, i, -1):
            name = ".".join(parts[i:j])
            if isinstance(node.get(name), dict):
                node, i = node[name], j
                break
        else:
            if "spark" in parts[i:] and node is not cfg and parts[i] == "spark":
                break  # a new Spark key under a conf mapping: keep it whole
            node = node.setdefault(parts[i], {})
            i += 1
    node[".".join(parts[i:])] = value


def parse_overrides(pairs: Iterable[str] | None) -> list[tuple[str, Any]]:
    """Parse ``key=value`` strings; values are YAML scalars (``3`` is an int, ``true`` a bool)."""
    out = []
    for pair in pairs or []:
        if "=" not in pair:
            raise ConfigError(f"override {pair!r} must look like key=value")
        key, raw = pair.split("=", 1)
        out.append((key.strip(), yaml.safe_load(raw) if raw != "" else ""))
    return out


def apply_overrides(cfg: dict, pairs: Iterable[str] | None) -> dict:
    cfg = copy.deepcopy(cfg)
    for key, value in parse_overrides(pairs):
        set_dotted(cfg, key, value)
    return cfg


def load_pipeline_conf(path: str | os.PathLike | None = None, overrides: Iterable[str] | None = None,
                       lakehouse: str | None = None) -> dict:
    """The pipeline config (conf/pipeline.yaml by default) with overrides and an optional lakehouse root."""
    cfg = load_yaml(path or DEFAULT_PIPELINE_CONF)
    cfg = apply_overrides(cfg, overrides)
    if lakehouse:
        cfg["lakehouse"] = lakehouse
    return cfg
