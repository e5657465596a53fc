"""The typed configuration of every model of ``sim.models`` (pydantic v2; imports no torch).

``ModelConfig`` has one field per key a model reads; ``model_defaults()`` is its defaults as a dict.
``sim.models.build_model(name, cfg)`` validates ``cfg`` (a mapping or a ``ModelConfig``) through it, so
a wrong value fails before any tensor is allocated, with pydantic's ``ValidationError`` (a subclass of
``ValueError``) naming the key and what it expects, e.g. for ``{"emb_dim": "abc"}``::

    emb_dim
      Input should be a valid integer, unable to parse string as an integer

Keys no model reads are refused with the message ``unknown model config keys [...]; known: [...]``.
Rules that depend on the model (``gsu_alpha`` needs a soft-search model) are checked by
``build_model``, which knows the parts; rules within one part (MIMN's ``mimn_miu_topk <= mimn_slots``)
by that part's constructor.

Notes longer than a field's description:

- ``gsu_aux_pooling``: "softmax" (default, U_r = sum_i softmax(r)_i e_i) differs from Equation 2 as
  written ("sum", U_r = sum_i r_i e_i); ``sim.models.search.GeneralSearchUnit`` says why.
- ``gsu_init``: "identity" (default) starts W_b, W_a as identity projections, so soft search starts
  from the inner product of the embeddings, which ranks the candidate's category first; measured on
  the demo data (docs/RESULTS.md), soft search's picks reached 78% of hard search's after one epoch
  with it, against 56% with "random" (PyTorch's default init). The paper does not say.
- ``embedding_l2``: the L2 penalty touches only the rows a batch looks up (the candidate's, the short
  sequence's and the long-term part's), per sample, as DIN's mini-batch aware regulariser; DIN also
  divides by each id's frequency, we do not.
- ``gsu_alpha`` / ``esu_beta``: Equation 5's weights; alpha = beta = 1 with soft search, and hard search
  is non-parametric, so it has no GSU term at all (alpha must stay None or 0).
"""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (BaseModel, ConfigDict, Field, NonNegativeFloat, PositiveInt,
                      model_validator)

Buckets = Annotated[int, Field(ge=2)]  # row 0 is padding, so a table needs a row for real ids too
Widths = list[PositiveInt]


class ModelConfig(BaseModel):
    """Every key a model reads, with its default and its constraint (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    item_buckets: Buckets = Field(
        1009, description="rows of the item embedding table (the memory knob: rows * emb_dim floats); "
        "ids are hashed into them")
    category_buckets: Buckets = Field(10_007, description="rows of the category embedding table")
    time_gap_buckets: PositiveInt = Field(
        64, description="rows of the time-gap table; must match the pipeline's time_gap_buckets")
    emb_dim: PositiveInt = Field(8, description="D per id field (the paper's public runs use 4)")
    mlp_dims: Widths = Field(
        [200, 80], description="hidden widths of the over-arch and of the soft-search aux head (then 1 logit)")
    attention_dims: Widths = Field([80, 40], description="hidden widths of the DIN score MLP")
    esu_heads: PositiveInt = Field(2, description="q, ESU heads")
    esu_proj_dim: PositiveInt = Field(16, description="P, per-head projection dim of W_b^i / W_a^i")
    soft_k: PositiveInt = Field(20, description="K behaviors soft search keeps")
    gsu_proj_dim: PositiveInt = Field(16, description="dim of W_b e_i and W_a e_a in soft search")
    gsu_aux_pooling: Literal["softmax", "sum"] = Field(
        "softmax", description="weights of e_i in soft search's aux input U_r: softmax(r) or r (Eq. 2)")
    gsu_init: Literal["identity", "random"] = Field(
        "identity", description="initial W_b, W_a of soft search: identity projections or PyTorch's default")
    gsu_prior: Literal["none", "cooc"] = Field(
        "none", description="soft search's category prior: none, or category co-occurrence within the "
        "training users' histories (filled by training; sim.training.search_prior)")
    gsu_prior_dim: PositiveInt = Field(
        64, description="width of the category co-occurrence vectors (at least the number of interests "
        "to tell apart: 16 merged the demo's 40 topics)")
    din_normalization: Literal["none", "softmax"] = Field(
        "none", description="DIN attention weights: raw (DIN's, keeps an interest's intensity) or softmax")
    hard_k: PositiveInt | None = Field(
        None, description="cap on behaviors the hard GSU keeps from the hard_* columns (None = all given)")
    mimn_slots: PositiveInt = Field(4, description="m, memory slots of mimn (the MIMN paper uses 4 or 8)")
    mimn_controller_dim: PositiveInt = Field(32, description="H, state dim of MIMN's GRU controller")
    mimn_miu_topk: PositiveInt = Field(
        1, description="slots whose Memory Induction Unit state each behavior updates (those read most)")
    mimn_util_reg: NonNegativeFloat = Field(
        1.0, description="weight of MIMN's memory utilisation regulariser in the loss")
    mimn_impl: Literal["fused", "reference"] = Field(
        "fused", description="how MIMN writes its memory: one compiled pass per row (sim.models.mimn_fused) "
                             "or the torch reference it is tested against; same results to float tolerance")
    dien_aux_weight: NonNegativeFloat = Field(
        1.0, description="weight of DIEN's next-behavior auxiliary loss in the loss")
    count_features: bool = Field(
        False, description="each part appends log counts and recency of what it reads (sim.models.counts)")
    pool_count: Literal["none", "log"] = Field(
        "none", description="mean / softmax pooled vectors scaled by log(1 + behaviors pooled) (sim.models.counts)")
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = Field(0.0, description="dropout of the MLPs")
    embedding_l2: NonNegativeFloat = Field(
        0.0, description="weight of the L2 penalty on the embeddings a batch looks up, per sample")
    gsu_alpha: NonNegativeFloat | None = Field(
        None, description="weight of the GSU aux loss (None = 1 with soft search; 0/None otherwise)")
    esu_beta: NonNegativeFloat | None = Field(None, description="weight of the main CTR loss (None = 1)")

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        """Name the unknown keys and list the known ones (pydantic's own message names one key at a time)."""
        if isinstance(data, dict):
            unknown = set(data) - set(cls.model_fields)
            if unknown:
                raise ValueError(f"unknown model config keys {sorted(unknown)}; "
                                 f"known: {sorted(cls.model_fields)}")
        return data


def model_defaults() -> dict[str, Any]:
    """Every config key a model reads, with its default (``ModelConfig``'s fields)."""
    return ModelConfig().model_dump()


__all__ = ["ModelConfig", "model_defaults"]
