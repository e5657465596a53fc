"""Configuration: one typed schema per file, loaded and checked before any work starts.

- :mod:`sim.config.base`: the error type (:class:`ConfigError`, one line per bad key), the pydantic
  base class of every block (:class:`Settings`), the YAML loader and the ``--set key=value`` overrides;
- :mod:`sim.config.pipeline`: ``conf/pipeline.yaml`` (:class:`PipelineConfig`) for the nightly jobs;
- :mod:`sim.config.experiment`: ``conf/experiments.yaml`` (:class:`ExperimentConfig`) for training.

Defaults have one source, the typed classes: a block built in Python (``PipelineConfig()``,
``ModelConfig(emb_dim=4)``, ``Windows(mode="count")``) gets what ``make demo`` runs with. The YAML files
write out the settings a user is expected to edit, with comments, and every value they write (the
``Base`` block of ``conf/experiments.yaml``; the experiment blocks below it are variations) equals the
typed default: a test walks both trees key by key (tests/test_config.py), so changing a default means
changing it in the class and in the YAML together. Keys the YAML leaves out take the typed default.
"""
from sim.config.base import (PROJECT_ROOT, ConfigError, IsoDate, Settings, apply_overrides, deep_merge,
                             describe, load_yaml, parse_date, parse_overrides, set_dotted)
from sim.config.pipeline import (DEFAULT_PIPELINE_CONF, Caps, GeneratorConfig, PipelineConfig, Retention,
                                 SparkSettings, TruthConfig, ValidationSettings, Windows, check_caps_fit,
                                 load_pipeline_conf)

__all__ = ["PROJECT_ROOT", "ConfigError", "IsoDate", "Settings", "apply_overrides", "deep_merge", "describe",
           "load_yaml", "parse_date", "parse_overrides", "set_dotted", "DEFAULT_PIPELINE_CONF", "Caps", "GeneratorConfig",
           "PipelineConfig", "Retention", "SparkSettings", "TruthConfig", "ValidationSettings", "Windows",
           "check_caps_fit", "load_pipeline_conf"]
