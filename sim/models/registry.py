"""Named parts and the models composed of them; ``build_model(name, cfg)``.

| name             | short-term part | long-term part                                                  |
|------------------|-----------------|-----------------------------------------------------------------|
| din              | din             | none                                                            |
| dien             | dien            | none (the industrial baseline of Table 4)                       |
| avgpool_long_din | din             | avgpool: masked mean of the long sequence                       |
| mimn             | din             | mimn: MIMN memory + MIU, written in behavior order, read by e_a |
| gsu_only_hard    | din             | gsu_pool_hard: hard GSU, K behaviors avg-pooled ("first stage") |
| gsu_only_soft    | din             | gsu_pool_soft: soft GSU (+ aux CTR head), K behaviors avg-pooled |
| sim_hard         | din             | sim_hard: hard GSU -> ESU                                       |
| sim_soft         | din             | sim_soft: soft GSU (+ aux CTR head) -> ESU                      |
| sim_hard_time    | din             | sim_hard_time: hard GSU -> ESU with time-gap embeddings         |
| sim_soft_time    | din             | sim_soft_time: soft GSU (+ aux head) -> ESU with time-gap embeddings |

The long-term part ``din_long`` (DIN attention over all of ``long_*``) is in no named model: it is the
cost reference of ``bench/bench_models.py``, which builds it with ``compose("din", "din_long", cfg)``.

"Only First Stage (soft)" (Table 3) in the paper searches with embeddings fixed after a pre-training
run; ``gsu_only_soft`` trains the search and the embeddings jointly with the CTR loss (one run, as SIM
soft itself), so it is the paper's ablation without the separate pre-training (docs/RESULTS.md).
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

from sim.models.config import ModelConfig
from sim.models.layers import FeatureEmbedding
from sim.models.parts import (AvgPoolLong, DIENShort, DINLong, DINShort, GSUPoolLong, LongTermArch,
                              MIMNLong, ShortTermArch, SIMLong)
from sim.models.search import ExactSearchUnit, GeneralSearchUnit
from sim.models.sim import CTRModel

# A part factory: (validated config, E = 2 * emb_dim) -> the part.
ShortFactory = Callable[[ModelConfig, int], ShortTermArch]
LongFactory = Callable[[ModelConfig, int], LongTermArch]


def _gsu(c: ModelConfig, dim: int, mode: str) -> GeneralSearchUnit:
    if mode == "soft":
        return GeneralSearchUnit("soft", k=c.soft_k, behavior_dim=dim, proj_dim=c.gsu_proj_dim,
                                 aux_hidden=c.mlp_dims, aux_pooling=c.gsu_aux_pooling,
                                 dropout=c.dropout, init=c.gsu_init,
                                 prior_dim=c.gsu_prior_dim if c.gsu_prior == "cooc" else 0,
                                 category_buckets=c.category_buckets)
    return GeneralSearchUnit("hard", k=c.hard_k)


def _alpha(c: ModelConfig, mode: str) -> float:
    """Equation 5's alpha: 1 unless set with soft search; hard search has none."""
    if mode != "soft":
        return 0.0
    return 1.0 if c.gsu_alpha is None else c.gsu_alpha


def _searched(mode: str, esu: bool, with_time: bool = False) -> LongFactory:
    """Factory of a search part: hard search reads the pipeline's ``hard_*`` columns (the UBT lookup
    already searched by category), soft search the ``long_*`` ones."""
    sequence = "long" if mode == "soft" else "hard"

    def build(c: ModelConfig, dim: int) -> LongTermArch:
        gsu = _gsu(c, dim, mode)
        if not esu:
            return GSUPoolLong(gsu, dim, sequence, _alpha(c, mode))
        unit = ExactSearchUnit(dim, c.emb_dim, c.esu_heads, c.esu_proj_dim, with_time)
        return SIMLong(gsu, unit, sequence, _alpha(c, mode))

    return build


SHORT_PARTS: dict[str, ShortFactory] = {
    "din": lambda c, dim: DINShort(dim, c.attention_dims, c.din_normalization),
    "dien": lambda c, dim: DIENShort(dim, c.dien_aux_weight),
}

LONG_PARTS: dict[str, LongFactory] = {
    "avgpool": lambda c, dim: AvgPoolLong(dim),
    "din_long": lambda c, dim: DINLong(dim, c.attention_dims, c.din_normalization),
    "mimn": lambda c, dim: MIMNLong(dim, c.mimn_slots, c.mimn_controller_dim, c.mimn_miu_topk,
                                    c.attention_dims, c.mimn_util_reg, c.mimn_impl),
    "gsu_pool_hard": _searched("hard", esu=False),
    "gsu_pool_soft": _searched("soft", esu=False),
    "sim_hard": _searched("hard", esu=True),
    "sim_soft": _searched("soft", esu=True),
    "sim_hard_time": _searched("hard", esu=True, with_time=True),
    "sim_soft_time": _searched("soft", esu=True, with_time=True),
}

# Model name -> (short-term part, long-term part or None).
MODELS: dict[str, tuple[str, str | None]] = {
    "din": ("din", None),
    "dien": ("dien", None),
    "avgpool_long_din": ("din", "avgpool"),
    "mimn": ("din", "mimn"),
    "gsu_only_hard": ("din", "gsu_pool_hard"),
    "gsu_only_soft": ("din", "gsu_pool_soft"),
    "sim_hard": ("din", "sim_hard"),
    "sim_soft": ("din", "sim_soft"),
    "sim_hard_time": ("din", "sim_hard_time"),
    "sim_soft_time": ("din", "sim_soft_time"),
}

MODEL_NAMES: tuple[str, ...] = tuple(MODELS)


def validate(cfg: Mapping[str, Any] | ModelConfig | None) -> ModelConfig:
    """``cfg`` as a ``ModelConfig`` (defaults for the keys it lacks).

    Raises:
        pydantic.ValidationError (a ValueError): an unknown key or a value of the wrong type or range,
        naming the key.
    """
    if isinstance(cfg, ModelConfig):
        return cfg
    return ModelConfig.model_validate(dict(cfg or {}))


def compose(short: str, long: str | None, cfg: Mapping[str, Any] | ModelConfig | None = None,
            name: str = "") -> CTRModel:
    """A model of the named short-term and long-term parts (``SHORT_PARTS``, ``LONG_PARTS``).

    The embedding tables are built first, then the short-term part, the long-term part and the
    over-arch: under one seed, a model's initial weights do not depend on how it was named.

    Raises:
        ValueError: unknown part name, invalid config, or ``gsu_alpha`` set without soft search.
    """
    if short not in SHORT_PARTS:
        raise ValueError(f"unknown short-term part {short!r}; known: {', '.join(SHORT_PARTS)}")
    if long is not None and long not in LONG_PARTS:
        raise ValueError(f"unknown long-term part {long!r}; known: {', '.join(LONG_PARTS)}")
    c = validate(cfg)
    embedding = FeatureEmbedding(c.item_buckets, c.category_buckets, c.time_gap_buckets, c.emb_dim)
    dim = embedding.behavior_dim
    short_part = SHORT_PARTS[short](c, dim).configure(c.count_features)
    long_part = None if long is None else LONG_PARTS[long](c, dim).configure(c.count_features, c.pool_count)
    soft = getattr(getattr(long_part, "gsu", None), "mode", None) == "soft"
    if c.gsu_alpha not in (None, 0.0) and not soft:
        raise ValueError(f"gsu_alpha={c.gsu_alpha} needs a soft-search model; {name or (short, long)} "
                         "has no GSU loss (hard search is non-parametric, alpha = 0)")
    return CTRModel(embedding, short_part, long_part, mlp_dims=c.mlp_dims, dropout=c.dropout,
                    embedding_l2=c.embedding_l2, esu_beta=1.0 if c.esu_beta is None else c.esu_beta,
                    name=name)


def build_model(name: str, cfg: Mapping[str, Any] | ModelConfig | None = None) -> CTRModel:
    """Build a model by its registry name.

    Args:
        name: one of ``MODEL_NAMES``.
        cfg: a ``ModelConfig``, or a mapping of overrides of ``model_defaults()``.

    Raises:
        ValueError: unknown name (the message lists the known ones); pydantic.ValidationError (a
            ValueError) for an unknown config key or an invalid value, naming the key; ValueError
            for ``gsu_alpha`` on a model without soft search.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(MODEL_NAMES)}")
    short, long = MODELS[name]
    return compose(short, long, cfg, name=name)
