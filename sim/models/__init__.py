"""Torch models: SIM (Pi et al., CIKM 2020) and the baselines of its Table 2, selectable by name.

Usage::

    model = build_model("sim_soft_time", {"emb_dim": 4})
    out = model(batch)                 # {"logit": B, "gsu_logit": B, ...}
    loss = model.loss(out, batch["label"])
"""
from __future__ import annotations

from typing import Any, Mapping

from sim.models.layers import hash_ids
from sim.models.sim import MODEL_SPECS, SIM, CTRModel, ModelSpec, model_defaults

MODEL_NAMES: tuple[str, ...] = tuple(MODEL_SPECS)


def build_model(name: str, cfg: Mapping[str, Any] | None = None) -> CTRModel:
    """Build a model by its registry name.

    Args:
        name: one of ``MODEL_NAMES``.
        cfg: overrides of ``model_defaults()``.

    Raises:
        ValueError: unknown name (the message lists the known ones) or unknown / invalid config.
    """
    if name not in MODEL_SPECS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(MODEL_NAMES)}")
    return CTRModel(MODEL_SPECS[name], cfg, name=name)


__all__ = ["MODEL_NAMES", "build_model", "model_defaults", "CTRModel", "SIM", "ModelSpec",
           "hash_ids"]
