"""SIM (Pi et al., CIKM 2020, Figure 1) and the paper's baselines as compositions of one model class.

``CTRModel`` = a short-term part + an optional long-term part (``sim.models.parts``) + the Embedding&MLP
over-arch: [U_lt, short-term interest, e_a] -> MLP -> CTR logit. The model knows no part by name: it
calls the parts it is given through their common interface, as torchrec's DLRM composes the arches
it is passed. Which parts each named model has (Section 5 "Competitors", Tables 2-4) is the registry's
table, ``sim.models.registry``.

Loss (Equation 5): alpha * L_GSU + beta * L_ESU, alpha = beta = 1 with soft search; hard search is
non-parametric, so alpha = 0 and no GSU term exists at all. Each part adds its own terms (soft search
its GSU aux loss, DIEN its next-behavior auxiliary loss, MIMN its utilisation regulariser); the model
adds beta * the main CTR loss and the ``embedding_l2`` penalty.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sim.models.layers import MLP, FeatureEmbedding
from sim.models.parts import InterestArch, LongTermArch, ShortTermArch

# Attribute names of the model's own modules, which a part's sub-modules may not take.
_OWN = ("embedding", "over_arch")


class CTRModel(nn.Module):
    """SIM and its baselines: [U_lt, short-term interest, e_a] -> MLP -> CTR logit.

    The parts' sub-modules are registered on the model under their own names (``short_attention``,
    ``dien``, ``gsu``, ``esu``, ``memory``, ``long_attention``), not under a part's prefix, so the
    state-dict keys are those of the models before they were composed from parts (old checkpoints
    load) and ``model.gsu`` is the search unit. The parts themselves are ``short_term`` and
    ``long_term`` (plain attributes: registering them too would list every parameter twice).

    Args:
        embedding: the id tables every part shares (e_a = item ⊕ category, E = 2D).
        short_term: the short-term part (reads ``short_*``).
        long_term: the long-term part, or None for a short-term-only model (din, dien).
        mlp_dims: hidden widths of the over-arch; a 1-logit layer follows.
        dropout: dropout of the over-arch.
        embedding_l2: weight of the L2 penalty on the embeddings a batch looks up, per sample.
        esu_beta: beta, weight of the main CTR loss.
        name: the model's registry name (for logs and checkpoints).

    Shape legend: B batch, S short length, K hard/soft-search length, L long length, E = 2 * emb_dim,
    H ESU heads.
    """

    def __init__(self, embedding: FeatureEmbedding, short_term: ShortTermArch,
                 long_term: LongTermArch | None = None, *, mlp_dims: Sequence[int] = (200, 80),
                 dropout: float = 0.0, embedding_l2: float = 0.0, esu_beta: float = 1.0,
                 name: str = "") -> None:
        super().__init__()
        if embedding_l2 < 0 or esu_beta < 0:
            raise ValueError(f"embedding_l2 and esu_beta must be >= 0, got {embedding_l2}, {esu_beta}")
        self.name = name
        self.embedding_l2, self.esu_beta = float(embedding_l2), float(esu_beta)
        self.embedding = embedding
        for part in (short_term, long_term):
            if part is not None:
                self._adopt(part)
        # Plain attributes (see the class docstring); nn.Module.__setattr__ would register them.
        self.__dict__["short_term"] = short_term
        self.__dict__["long_term"] = long_term
        long_dim = 0 if long_term is None else long_term.out_dim
        self.over_arch = MLP(long_dim + short_term.out_dim + embedding.behavior_dim, mlp_dims,
                             out_dim=1, dropout=dropout)

    def _adopt(self, part: InterestArch) -> None:
        """Register the part's sub-modules on the model under their own names."""
        own = [*part.parameters(recurse=False), *part.buffers(recurse=False)]
        if own:
            raise ValueError(f"{type(part).__name__} holds parameters of its own; a part keeps them "
                             "in sub-modules")
        for child_name, child in part.named_children():
            if child_name in _OWN or child_name in self._modules:
                raise ValueError(f"two modules named {child_name!r}: parts' sub-modules need distinct "
                                 f"names other than {_OWN}")
            self.add_module(child_name, child)

    @property
    def parts(self) -> tuple[InterestArch, ...]:
        """The short-term part, then the long-term one if any."""
        return (self.short_term,) if self.long_term is None else (self.short_term, self.long_term)

    def train(self, mode: bool = True) -> "CTRModel":
        super().train(mode)
        for part in self.parts:  # their sub-modules are ours already; this sets the parts' own flag
            part.train(mode)
        return self

    @property
    def sequences(self) -> tuple[str, ...]:
        """The samples' sequences this model reads: short (DIN or DIEN), then the long-term part's own
        (``hard`` for hard search, ``long`` for soft search and the whole-sequence baselines)."""
        return tuple(s for part in self.parts for s in part.sequences)

    @property
    def input_columns(self) -> tuple[str, ...]:
        """Columns of the samples table ``forward`` reads (a reader need not load the others): item and
        category ids of the candidate and of each sequence, time-gap buckets only where a part embeds
        them."""
        return ("item_id", "category_id", *(c for part in self.parts for c in part.input_columns))

    def forward(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Args:
            batch: the samples-table columns as tensors (:mod:`sim.samples.contract`): ``item_id``,
                ``category_id`` (B), ``short_*`` (B X S), ``hard_*`` (B X K), ``long_*`` (B X L);
                a model reads only ``input_columns``.

        Returns:
            dict with ``logit`` B, the main (ESU / over-arch) CTR logit; ``embedding_sq`` scalar, the
            squared norm of the looked-up embeddings per sample (only with ``embedding_l2`` > 0); and
            the parts' outputs (``sim.models.parts``):
            ``short_attention`` B X S, DIN weights of the short part (DIEN: the AUGRU's a_t);
            ``dien_aux_loss`` scalar, DIEN's next-behavior auxiliary loss (dien);
            ``gsu_logit`` B, soft-search aux CTR logit (soft models only);
            ``gsu_scores`` B X L, ``gsu_index`` B X K and ``gsu_mask`` B X K (GSU models: positions
            kept in the searched sequence, ``long_*`` for soft search, ``hard_*`` for hard search);
            ``esu_attention`` B X H X K (ESU models); ``long_attention`` B X L (din_long);
            ``memory_read`` B X slots and ``miu_read`` B X slots, the target's attention over the
            memory slots and the MIU states, ``memory_usage`` B X slots, each slot's share of the
            write mass, ``mimn_util_loss`` scalar, the utilisation regulariser (mimn).
        """
        out: dict[str, Tensor] = {}
        target = self.embedding.items_and_cats(batch["item_id"], batch["category_id"])
        u_short, extra, looked_up = self.short_term(self.embedding, batch, target)
        out.update(extra)
        features = [u_short, target]
        looked_up = [target, *looked_up]
        if self.long_term is not None:
            u_long, extra, looked = self.long_term(self.embedding, batch, target)
            out.update(extra)
            looked_up.extend(looked)
            features.insert(0, u_long)
        out["logit"] = self.over_arch(torch.cat(features, dim=-1)).squeeze(-1)
        if self.embedding_l2 > 0:
            out["embedding_sq"] = sum(e.pow(2).sum() for e in looked_up) / max(1, target.shape[0])
        return out

    def loss(self, outputs: Mapping[str, Tensor], labels: Tensor) -> Tensor:
        """Equation (5): beta * BCE(logit) plus the parts' terms (soft search: alpha * BCE(gsu_logit);
        DIEN: ``dien_aux_weight`` * its auxiliary loss; MIMN: ``mimn_util_reg`` * its regulariser), plus
        ``embedding_l2`` times the squared norm of the embeddings the batch looked up (per sample). The
        parts' terms are added before the L2 term (before the composition from parts, DIEN's and MIMN's
        came after it), so with ``embedding_l2`` > 0 their float sum may differ in its last bit.

        Args:
            outputs: what ``forward`` returned.
            labels: B clicks, 0/1 (int or float).

        Returns:
            Scalar loss (mean over the batch).
        """
        y = labels.to(outputs["logit"].dtype)
        total = self.esu_beta * F.binary_cross_entropy_with_logits(outputs["logit"], y)
        for part in self.parts:
            for term in part.loss_terms(outputs, y):
                total = total + term
        if self.embedding_l2 > 0:
            total = total + self.embedding_l2 * outputs["embedding_sq"]
        return total

    def attention_weights(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Attention weights of every attention the model has (for tests and analysis).

        Returns:
            subset of ``short_attention`` B X S, ``esu_attention`` B X H X K,
            ``long_attention`` B X L, ``memory_read`` and ``miu_read`` B X slots.
        """
        keys = ("short_attention", "esu_attention", "long_attention", "memory_read", "miu_read")
        out = self.forward(batch)
        return {k: v for k, v in out.items() if k in keys}


# The paper's name for the full model; the baselines are the same class with other parts.
SIM = CTRModel
