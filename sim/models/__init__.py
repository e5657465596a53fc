"""Torch models: SIM (Pi et al., CIKM 2020) and the baselines of its Table 2, selectable by name.

Usage::

    model = build_model("sim_soft_time", {"emb_dim": 4})
    out = model(batch)                 # {"logit": B, "gsu_logit": B, ...}
    loss = model.loss(out, batch["label"])

``ModelConfig`` and ``model_defaults`` (``sim.models.config``) import no torch, and neither does
importing this package: the other names load torch on first use.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Mapping

from sim.models.config import ModelConfig, model_defaults

_LAZY = {"MODEL_NAMES": "sim.models.sim", "MODEL_SPECS": "sim.models.sim", "CTRModel": "sim.models.sim",
         "SIM": "sim.models.sim", "ModelSpec": "sim.models.sim", "hash_ids": "sim.models.layers"}

if TYPE_CHECKING:
    from sim.models.layers import hash_ids
    from sim.models.sim import MODEL_NAMES, MODEL_SPECS, SIM, CTRModel, ModelSpec


def __getattr__(name: str) -> Any:
    """The torch-backed names, imported on first access."""
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def build_model(name: str, cfg: Mapping[str, Any] | ModelConfig | None = None) -> "CTRModel":
    """Build a model by its registry name.

    Args:
        name: one of ``MODEL_NAMES``.
        cfg: a ``ModelConfig``, or a mapping of overrides of ``model_defaults()``.

    Raises:
        ValueError: unknown name (the message lists the known ones); pydantic.ValidationError (a
            ValueError) for an unknown config key or an invalid value, naming the key.
    """
    from sim.models.sim import MODEL_NAMES, MODEL_SPECS, CTRModel

    if name not in MODEL_SPECS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(MODEL_NAMES)}")
    return CTRModel(MODEL_SPECS[name], cfg, name=name)


__all__ = ["MODEL_NAMES", "build_model", "model_defaults", "ModelConfig", "CTRModel", "SIM", "ModelSpec",
           "hash_ids"]
