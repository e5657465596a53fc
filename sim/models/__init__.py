"""Torch models: SIM (Pi et al., CIKM 2020) and the baselines of its Table 2, selectable by name.

Usage::

    model = build_model("sim_soft_time", {"emb_dim": 4})
    out = model(batch)                 # {"logit": B, "gsu_logit": B, ...}
    loss = model.loss(out, batch["label"])

A model is a ``CTRModel`` (``sim.models.sim``) composed of the parts of ``sim.models.parts``; the
registry (``sim.models.registry``) names the parts and the models. ``ModelConfig`` and
``model_defaults`` (``sim.models.config``) import no torch, and neither does importing this package:
the other names load torch on first use.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from sim.models.config import ModelConfig, model_defaults

_LAZY = {"MODEL_NAMES": "sim.models.registry", "build_model": "sim.models.registry",
         "compose": "sim.models.registry", "CTRModel": "sim.models.sim", "SIM": "sim.models.sim",
         "hash_ids": "sim.models.layers"}

if TYPE_CHECKING:
    from sim.models.layers import hash_ids
    from sim.models.registry import MODEL_NAMES, build_model, compose
    from sim.models.sim import SIM, CTRModel


def __getattr__(name: str) -> Any:
    """The torch-backed names, imported on first access."""
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["MODEL_NAMES", "build_model", "compose", "model_defaults", "ModelConfig", "CTRModel",
           "SIM", "hash_ids"]
