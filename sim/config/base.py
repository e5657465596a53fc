"""What every configuration shares: the error type and its one style, the typed base class, the YAML
loader and the dotted ``--set key=value`` overrides.

A setting is a pydantic model (:class:`Settings`): values are parsed and checked when the
configuration is loaded, before any job or training starts, and every mistake is reported the same
way, as a :class:`ConfigError` whose lines name the dotted key, what it expects and what it got::

    model.emb_dim: Input should be a valid integer, unable to parse string as an integer (got 'abc')
"""
from __future__ import annotations

import copy
import datetime as _dt
import os
from pathlib import Path
from typing import Annotated, Any, ClassVar, Iterable, Mapping

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError

PROJECT_ROOT = Path(__file__).resolve().parent.parent.parent


class ConfigError(ValueError):
    """A configuration that cannot work; the message says what to change."""


def parse_date(date: str) -> _dt.date:
    """An ISO date (yyyy-MM-dd) of a command line or config; anything else is a :class:`ConfigError`."""
    try:
        return _dt.date.fromisoformat(date)
    except ValueError as e:
        raise ConfigError(f"date {date!r} must look like yyyy-MM-dd") from e


# ----------------------------------------------------------------------------------- typed settings
def _known_keys(model: type[BaseModel] | None, loc: tuple) -> list[str]:
    """The keys a settings class accepts at ``loc`` (the path of the unknown key's parent)."""
    for part in loc:
        field = model.model_fields.get(str(part)) if model is not None else None
        sub = getattr(field, "annotation", None) if field is not None else None
        model = sub if isinstance(sub, type) and issubclass(sub, BaseModel) else None
    return sorted(model.model_fields) if model is not None else []


def describe(error: ValidationError, prefix: str = "", model: type[BaseModel] | None = None) -> str:
    """One line per problem: ``dotted.key: what it expects (got value)``."""
    lines = []
    for e in error.errors():
        loc = tuple(e["loc"])
        key = ".".join(str(p) for p in (prefix, *loc) if p != "")
        msg = e["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
        if e["type"] == "extra_forbidden":
            known = _known_keys(model, loc[:-1])
            msg = "unknown key" + (f"; known: {', '.join(known)}" if known else "")
            lines.append(f"{key}: {msg}")
        elif e["type"] in ("missing", "value_error") or not loc:
            lines.append(f"{key}: {msg}" if key else msg)
        else:
            lines.append(f"{key}: {msg} (got {e['input']!r})")
    return "\n".join(lines)


class Settings(BaseModel):
    """Base of every settings block: unknown keys are refused and values are parsed to their types.
    :meth:`parse` is how user input comes in: a bad value raises :class:`ConfigError` naming its dotted
    key (``section`` prefixes it). Built in code (``Windows(long_days=3)``), a block raises pydantic's
    ValidationError (a ValueError) instead: a programming error, not a user's."""
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)
    section: ClassVar[str] = ""

    @classmethod
    def parse(cls, data: Mapping | None, where: str = ""):
        """Validate a mapping; the error names ``where`` (a file) as well as the keys."""
        try:
            return cls.model_validate(dict(data or {}))
        except ValidationError as e:
            text = describe(e, cls.section, cls)
            raise ConfigError(f"{where}:\n{text}" if where else text) from None


def _iso_date(value: Any) -> str:
    if isinstance(value, _dt.datetime):
        value = value.date()
    if isinstance(value, _dt.date):
        return value.isoformat()
    if not isinstance(value, str):
        raise ValueError(f"a date YYYY-MM-DD is expected, got {value!r}")
    try:
        return _dt.date.fromisoformat(value).isoformat()
    except ValueError:
        raise ValueError(f"{value!r} is not a date YYYY-MM-DD") from None


# A calendar date kept as its ISO string (YAML may hand over a date object or a string).
IsoDate = Annotated[str, BeforeValidator(_iso_date)]


# ------------------------------------------------------------------------------------- YAML + --set
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
    """Set ``cfg['a']['b'] = value`` for ``key='a.b'``, creating levels as needed (also in place of a
    block that is off: ``nightly.export.store=...`` under ``export: null``).

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
            if node.get(parts[i]) in (None, False):  # a block that is off (null / false) is turned on
                node[parts[i]] = {}
            node = node[parts[i]]
            i += 1
    node[".".join(parts[i:])] = value


def parse_overrides(pairs: Iterable[str] | None) -> list[tuple[str, Any]]:
    """Parse ``key=value`` strings; values are YAML scalars (``3`` is an int, ``true`` a bool)."""
    out = []
    for pair in pairs or []:
        if "=" not in pair:
            raise ConfigError(f"override {pair!r} must look like key=value")
        key, raw = pair.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except (yaml.YAMLError, ValueError):  # e.g. 2024-13-01 looks like a date to YAML
            value = raw  # not a YAML scalar: the text itself, checked by the key's type
        out.append((key.strip(), value))
    return out


def apply_overrides(cfg: dict, pairs: Iterable[str] | None) -> dict:
    cfg = copy.deepcopy(cfg)
    for key, value in parse_overrides(pairs):
        set_dotted(cfg, key, value)
    return cfg
