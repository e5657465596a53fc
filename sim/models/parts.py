"""The interest parts a ``CTRModel`` is composed of: one short-term part and at most one long-term part.

Every part is an ``nn.Module`` with one interface (``InterestArch``):

- ``sequences``: the samples' sequences it reads (``short``; ``hard`` for hard search, ``long`` for soft
  search and the whole-sequence baselines); ``input_columns``: their columns it reads (``*_gaps`` only
  where it embeds time gaps);
- ``out_dim``: features of the interest vector it hands the over-arch;
- ``forward(embedding, batch, target) -> (interest B X out_dim, outputs, looked-up embeddings)``: the
  outputs go into the model's output dict; the embeddings it looked up feed ``embedding_l2``;
- ``loss_terms(outputs, labels)``: its own weighted loss terms (soft search's GSU aux loss, MIMN's
  utilisation regulariser, DIEN's auxiliary loss), added to the main CTR loss.

A part holds no parameter of its own, only sub-modules (``short_attention``, ``dien``, ``gsu``, ``esu``,
``memory``, ``long_attention``), which ``CTRModel`` registers under those names: state-dict keys do not
depend on how a model was composed. Where a part differs from its paper is said in the module it
wraps (``sim.models.search``, ``sim.models.baselines``, ``sim.models.layers``).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sim.models.baselines import DIEN
from sim.models.counts import (LONG_FEATURES, POOL_COUNTS, RELATED_FEATURES, SHORT_FEATURES, long_features,
                               scale_by_count, sequence_counts)
from sim.models.layers import Behaviors, FeatureEmbedding, TargetAttention, masked_mean
from sim.models.mimn import MIMN
from sim.models.search import ExactSearchUnit, GeneralSearchUnit, SearchResult

PartOutput = tuple[Tensor, dict[str, Tensor], list[Tensor]]


def read_sequence(batch: Mapping[str, Tensor], name: str) -> Behaviors:
    """One sequence of the batch; without its ``*_gaps`` column (a part without time information
    need not read it) the gaps are all padding."""
    items = batch[f"{name}_items"]
    gaps = batch.get(f"{name}_gaps")
    return Behaviors(items, batch[f"{name}_cats"], torch.zeros_like(items) if gaps is None else gaps)


class InterestArch(nn.Module):
    """The interface of every part (see the module docstring).

    Attributes:
        sequences: the samples' sequences ``forward`` reads.
        with_time: ``forward`` reads the ``*_gaps`` columns of its sequences.
    """

    sequences: tuple[str, ...] = ()
    with_time: bool = False
    # With ``counts`` the part appends its count features (sim.models.counts) to its interest vector.
    counts: bool = False
    count_columns: tuple[str, ...] = ()
    pool_count: str = "none"

    def configure(self, counts: bool = False, pool_count: str = "none") -> "InterestArch":
        """Set the count options of ``sim.models.counts`` (the registry calls this after building the
        part); ``pool_count`` acts only where a part pools by a mean or a softmax."""
        if pool_count not in POOL_COUNTS:
            raise ValueError(f"pool_count must be one of {POOL_COUNTS}, got {pool_count!r}")
        self.counts, self.pool_count = bool(counts), pool_count
        return self

    @property
    def out_dim(self) -> int:
        """Features of the interest vector."""
        raise NotImplementedError

    @property
    def input_columns(self) -> tuple[str, ...]:
        """Columns of the samples table ``forward`` reads: ids and categories of its sequences, their
        time-gap buckets only with ``with_time``, and the scalars its count features need."""
        fields = ("items", "cats", "gaps") if self.with_time else ("items", "cats")
        return (*(f"{s}_{f}" for s in self.sequences for f in fields),
                *(self.count_columns if self.counts else ()))

    def forward(self, embedding: FeatureEmbedding, batch: Mapping[str, Tensor],
                target: Tensor) -> PartOutput:
        """Args:
            embedding: the model's shared tables.
            batch: the samples-table columns as tensors (:mod:`sim.samples.contract`).
            target: B X E the candidate's embedding e_a.

        Returns:
            (interest B X out_dim, outputs for the model's output dict, embeddings looked up).
        """
        raise NotImplementedError

    def loss_terms(self, outputs: Mapping[str, Tensor], labels: Tensor) -> list[Tensor]:
        """This part's weighted loss terms (scalars) given the model's outputs and float labels B;
        none by default."""
        return []


class ShortTermArch(InterestArch):
    """A short-term part: reads the ``short_*`` columns (never their gaps); its interest has the
    behaviors' width ``dim`` (E), plus ``SHORT_FEATURES`` count features with ``counts``."""

    sequences = ("short",)
    dim: int

    @property
    def out_dim(self) -> int:
        return self.dim + (SHORT_FEATURES if self.counts else 0)

    def _finish(self, u: Tensor, short: Behaviors, batch: Mapping[str, Tensor]) -> Tensor:
        if not self.counts:
            return u
        return torch.cat([u, sequence_counts(short, batch["item_id"], batch["category_id"])], dim=-1)


class LongTermArch(InterestArch):
    """A long-term part: reads ``long_*`` or ``hard_*``. With ``counts`` it appends ``LONG_FEATURES``
    count features of the sequence it reads (and reads ``long_len`` and ``d_category`` for them); with
    ``pool_count`` "log" a part that pools by a mean or a softmax scales the pooled vector by the log of
    the number of behaviors pooled (sim.models.counts)."""

    count_columns = ("long_len", "d_category")

    @property
    def extra_dim(self) -> int:
        return LONG_FEATURES if self.counts else 0

    def _finish(self, u: Tensor, pooled: Tensor | None, seq: Behaviors,
                batch: Mapping[str, Tensor], related: Tensor | None = None) -> Tensor:
        """``u`` scaled by the count of ``pooled`` (B X K mask of what was averaged; None: not a mean)
        with ``pool_count``, then with the count features of ``seq`` (and of soft search's ``related``
        weights, B X L, when its search has a prior)."""
        if self.pool_count == "log" and pooled is not None:
            u = scale_by_count(u, pooled)
        if self.counts:
            u = torch.cat([u, long_features(seq, batch, related)], dim=-1)
        return u


class DINShort(ShortTermArch):
    """DIN target attention over the short sequence; outputs ``short_attention`` B X S.

    Args:
        dim: E. attention_dims: widths of the score MLP. normalization: "none" (DIN) or "softmax".
    """

    def __init__(self, dim: int, attention_dims: Sequence[int], normalization: str = "none") -> None:
        super().__init__()
        self.dim = dim
        self.short_attention = TargetAttention(dim, attention_dims, normalization)

    def forward(self, embedding: FeatureEmbedding, batch: Mapping[str, Tensor],
                target: Tensor) -> PartOutput:
        short = read_sequence(batch, "short")
        e = embedding.behaviors(short)
        u, weights = self.short_attention(target, e, short.mask)
        return self._finish(u, short, batch), {"short_attention": weights}, [e]


class DIENShort(ShortTermArch):
    """DIEN over the short sequence; outputs ``short_attention`` (the AUGRU's a_t) and
    ``dien_aux_loss``, weighted by ``aux_weight`` in the loss.

    Args:
        dim: E. aux_weight: weight of the next-behavior auxiliary loss (>= 0).
    """

    def __init__(self, dim: int, aux_weight: float = 1.0) -> None:
        super().__init__()
        if aux_weight < 0:
            raise ValueError(f"dien_aux_weight must be >= 0, got {aux_weight}")
        self.dim, self.aux_weight = dim, float(aux_weight)
        self.dien = DIEN(dim)

    def forward(self, embedding: FeatureEmbedding, batch: Mapping[str, Tensor],
                target: Tensor) -> PartOutput:
        short = read_sequence(batch, "short")
        e = embedding.behaviors(short)
        u, weights, aux = self.dien(target, e, short.mask)
        return self._finish(u, short, batch), {"short_attention": weights, "dien_aux_loss": aux}, [e]

    def loss_terms(self, outputs: Mapping[str, Tensor], labels: Tensor) -> list[Tensor]:
        return [self.aux_weight * outputs["dien_aux_loss"]] if self.aux_weight > 0 else []


class _WholeLong(LongTermArch):
    """Base of the parts that read every behavior of ``long_*``."""

    sequences = ("long",)

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    @property
    def out_dim(self) -> int:
        return self.dim + self.extra_dim

    def _long(self, embedding: FeatureEmbedding, batch: Mapping[str, Tensor]) -> tuple[Behaviors, Tensor]:
        long = read_sequence(batch, "long")
        return long, embedding.behaviors(long)


class AvgPoolLong(_WholeLong):
    """Masked mean of the long sequence (``avgpool_long_din``). Args: dim: E."""

    def forward(self, embedding: FeatureEmbedding, batch: Mapping[str, Tensor],
                target: Tensor) -> PartOutput:
        long, e = self._long(embedding, batch)
        return self._finish(masked_mean(e, long.mask), long.mask, long, batch), {}, [e]


class DINLong(_WholeLong):
    """DIN target attention over all of ``long_*`` (not a paper model: the benchmark's cost reference);
    outputs ``long_attention`` B X L.

    Args:
        dim: E. attention_dims: widths of the score MLP. normalization: "none" (DIN) or "softmax".
    """

    def __init__(self, dim: int, attention_dims: Sequence[int], normalization: str = "none") -> None:
        super().__init__(dim)
        self.long_attention = TargetAttention(dim, attention_dims, normalization)

    def forward(self, embedding: FeatureEmbedding, batch: Mapping[str, Tensor],
                target: Tensor) -> PartOutput:
        long, e = self._long(embedding, batch)
        u, weights = self.long_attention(target, e, long.mask)
        return self._finish(u, None, long, batch), {"long_attention": weights}, [e]


class MIMNLong(_WholeLong):
    """MIMN's memory written in behavior order and read by the target (``sim.models.mimn.MIMN``);
    outputs ``memory_read``, ``miu_read``, ``memory_usage`` and ``mimn_util_loss``, weighted by
    ``util_reg`` in the loss.

    Args:
        dim: E. slots, controller_dim, miu_topk, attention_dims, impl: see ``MIMN``.
        util_reg: weight of the memory utilisation regulariser (>= 0).
    """

    def __init__(self, dim: int, slots: int, controller_dim: int, miu_topk: int,
                 attention_dims: Sequence[int], util_reg: float = 1.0, impl: str = "fused") -> None:
        super().__init__(dim)
        if util_reg < 0:
            raise ValueError(f"mimn_util_reg must be >= 0, got {util_reg}")
        self.util_reg = float(util_reg)
        self.memory = MIMN(dim, slots, controller_dim, miu_topk, attention_dims, impl)

    @property
    def out_dim(self) -> int:
        return self.memory.out_dim + self.extra_dim

    def forward(self, embedding: FeatureEmbedding, batch: Mapping[str, Tensor],
                target: Tensor) -> PartOutput:
        long, e = self._long(embedding, batch)
        u, extra = self.memory(target, e, long.mask)
        return self._finish(u, None, long, batch), extra, [e]

    def loss_terms(self, outputs: Mapping[str, Tensor], labels: Tensor) -> list[Tensor]:
        return [self.util_reg * outputs["mimn_util_loss"]] if self.util_reg > 0 else []


class _Searched(LongTermArch):
    """Base of the search parts: the GSU picks K behaviors of ``sequence``; outputs ``gsu_index``,
    ``gsu_mask`` B X K, ``gsu_scores`` B X L and, soft search only, ``gsu_logit`` B, whose BCE enters
    the loss with weight ``alpha`` (Equation 5; hard search is non-parametric: alpha must be 0).

    Args:
        gsu: the General Search Unit. sequence: what it searches ("hard" or "long").
        alpha: weight of the GSU aux loss.
    """

    def __init__(self, gsu: GeneralSearchUnit, sequence: str, alpha: float) -> None:
        super().__init__()
        if sequence not in ("hard", "long"):
            raise ValueError(f"a search part searches 'hard' or 'long', got {sequence!r}")
        if alpha < 0 or (alpha > 0 and gsu.mode != "soft"):
            raise ValueError(f"gsu_alpha={alpha} needs a soft-search model (hard search is "
                             "non-parametric, alpha = 0) and must be >= 0")
        self.gsu, self.sequences, self.alpha = gsu, (sequence,), float(alpha)

    @property
    def extra_dim(self) -> int:
        """Count features, with soft search's related-behavior features when its search has a prior."""
        with_prior = getattr(self.gsu, "prior_dim", 0) > 0
        return (LONG_FEATURES + (RELATED_FEATURES if with_prior else 0)) if self.counts else 0

    def _search(self, embedding: FeatureEmbedding, batch: Mapping[str, Tensor], target: Tensor,
                out: dict[str, Tensor]) -> tuple[Behaviors, SearchResult]:
        """(the searched sequence, what the GSU kept of it); the GSU's outputs go into ``out``."""
        searched = read_sequence(batch, self.sequences[0])
        found = self.gsu(embedding, searched, batch["category_id"], target)
        out["gsu_index"], out["gsu_mask"] = found.index, found.mask
        if found.scores is not None:
            out["gsu_scores"] = found.scores
        if found.aux_logit is not None:
            out["gsu_logit"] = found.aux_logit
        return searched, found

    def loss_terms(self, outputs: Mapping[str, Tensor], labels: Tensor) -> list[Tensor]:
        # Hard search has no GSU term at all, not a zero-weighted one.
        if self.alpha == 0:
            return []
        return [self.alpha * F.binary_cross_entropy_with_logits(outputs["gsu_logit"], labels)]


class GSUPoolLong(_Searched):
    """"Only first stage" (Table 3): the K behaviors the GSU kept, avg-pooled.

    Args:
        gsu, sequence, alpha: see ``_Searched``. dim: E.
    """

    def __init__(self, gsu: GeneralSearchUnit, dim: int, sequence: str, alpha: float = 0.0) -> None:
        super().__init__(gsu, sequence, alpha)
        self.dim = dim

    @property
    def out_dim(self) -> int:
        return self.dim + self.extra_dim

    def forward(self, embedding: FeatureEmbedding, batch: Mapping[str, Tensor],
                target: Tensor) -> PartOutput:
        out: dict[str, Tensor] = {}
        searched, found = self._search(embedding, batch, target, out)
        u = self._finish(masked_mean(found.embeddings, found.mask), found.mask, searched, batch, found.related)
        return u, out, [found.embeddings]


class SIMLong(_Searched):
    """SIM's long-term interest (Figure 1): GSU -> ESU; outputs ``esu_attention`` B X H X K too.

    Args:
        gsu, sequence, alpha: see ``_Searched``. esu: the Exact Search Unit; with its ``with_time``
            the part reads the searched sequence's ``*_gaps``.
    """

    def __init__(self, gsu: GeneralSearchUnit, esu: ExactSearchUnit, sequence: str,
                 alpha: float = 0.0) -> None:
        super().__init__(gsu, sequence, alpha)
        self.esu = esu
        self.with_time = esu.with_time

    @property
    def out_dim(self) -> int:
        return self.esu.out_dim + self.extra_dim

    def forward(self, embedding: FeatureEmbedding, batch: Mapping[str, Tensor],
                target: Tensor) -> PartOutput:
        out: dict[str, Tensor] = {}
        searched, found = self._search(embedding, batch, target, out)
        u, out["esu_attention"] = self.esu(embedding, found, target)
        return self._finish(u, found.mask, searched, batch, found.related), out, [found.embeddings]
