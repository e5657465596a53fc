"""Configuration: one typed schema per file, loaded and checked before any work starts.

- :mod:`sim.config.base`: the error type (:class:`ConfigError`, one line per bad key), the pydantic
  base class of every block (:class:`Settings`), the YAML loader and the ``--set key=value`` overrides;
- :mod:`sim.config.pipeline`: ``conf/pipeline.yaml`` (:class:`PipelineConfig`) for the nightly jobs;
- :mod:`sim.config.experiment`: ``conf/experiments.yaml`` (:class:`ExperimentConfig`) for training.
"""
from sim.config.base import (PROJECT_ROOT, ConfigError, IsoDate, Settings, apply_overrides, deep_merge,
                             describe, load_yaml, parse_overrides, set_dotted)
from sim.config.pipeline import (DEFAULT_PIPELINE_CONF, Caps, GeneratorConfig, PipelineConfig, Retention,
                                 SparkSettings, TruthConfig, ValidationSettings, Windows, check_caps_fit,
                                 load_pipeline_conf)

__all__ = ["PROJECT_ROOT", "ConfigError", "IsoDate", "Settings", "apply_overrides", "deep_merge", "describe",
           "load_yaml", "parse_overrides", "set_dotted", "DEFAULT_PIPELINE_CONF", "Caps", "GeneratorConfig",
           "PipelineConfig", "Retention", "SparkSettings", "TruthConfig", "ValidationSettings", "Windows",
           "check_caps_fit", "load_pipeline_conf"]
