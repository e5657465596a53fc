"""SIM's two search units (Pi et al., CIKM 2020, Section 3), built from ``sim.models.layers``.

- ``GeneralSearchUnit``: Section 3.2, Equation (1). Hard-search r_i = Sign(C_i = C_a);
  soft-search r_i = (W_b e_i) . (W_a e_a) with the auxiliary CTR task of Equation (2).
- ``ExactSearchUnit``: Section 3.3, Equations (3)-(4), U_lt = concat(head_1..head_q).

Shape legend as in ``sim.models.layers``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor, nn

from sim.models.layers import (Behaviors, FeatureEmbedding, MLP, MultiHeadTargetAttention, hash_ids,
                               masked_softmax)


@dataclass
class SearchResult:
    """What a General Search Unit hands on.

    Attributes:
        behaviors: B X K the kept behaviors (ids, as input).
        embeddings: B X K X E their e_i (sharing the autograd graph of the embedding tables).
        mask: B X K bool, True at kept real behaviors; a row with fewer than K real behaviors has
            padded slots here that every consumer must mask.
        index: B X K positions in the searched sequence.
        scores: B X L relevance r_i of every searched position (soft: the inner product, hard: 0/1),
            None when not computed.
        aux_logit: B logit of the soft-search auxiliary CTR head, None for hard search.
        related: B X L in [0, 1], how related each searched behavior is to the candidate by the search's
            category prior (its cosine, clipped at 0); None without a prior.
    """

    behaviors: Behaviors
    embeddings: Tensor
    mask: Tensor
    index: Tensor
    scores: Tensor | None = None
    aux_logit: Tensor | None = None
    related: Tensor | None = None


class GeneralSearchUnit(nn.Module):
    """Section 3.2: pick the top-K behaviors relevant to the candidate.

    ``mode="hard"``: r_i = Sign(C_i = C_a), non-parametric. In the pipeline the UBT lookup has
    already done this search in Spark (the ``hard_*`` columns, newest first, capped at 200), so on
    those columns the unit only re-checks the category rule and masks anything else; on a raw
    sequence it performs the search itself. Newest behaviors win when more than K match.

    ``mode="soft"``: r_i = (W_b e_i) . (W_a e_a); keeps the K highest scores (exact search over the
    sequence it is given: for the L <= a few thousand the samples carry, a sort is cheaper than
    building an ALSH index). It owns the auxiliary CTR head of Equation (2), which is what trains
    W_b and W_a: the top-K selection itself passes no gradient.
    ``aux_pooling="sum"`` is Equation (2) as written: U_r = sum_i r_i e_i over all real behaviors.
    ``aux_pooling="softmax"`` (default) uses U_r = sum_i softmax(r)_i e_i instead. Why the default
    differs from the paper: with the raw sum the auxiliary task is symmetric in the sign of r (negating
    W_a negates U_r, which the MLP's first layer absorbs), so it can fit clicks equally well with the
    relevant behaviors scored *lowest*, and the top-K by r is then not what the aux head found
    relevant. Measured on the demo data (docs/RESULTS.md): with the sum the aux AUC rose while the
    share of hard search's picks that soft search retrieved stayed near 0.25; with the softmax, high r
    is what pools a behavior, the two agree, and the overlap passed 0.8. The softmax also keeps the aux
    MLP's input on one scale for users with 1 or 54,000 behaviors. The top-K order is computed the same
    way in both modes.

    ``prior_dim`` > 0 (soft only) adds a search prior over categories: r_i gains ``prior_scale`` * (p_{c_i} .
    p_{c_a}), with p a fixed unit vector per category row (a buffer, zero until :meth:`set_prior` fills it,
    e.g. with :func:`sim.training.search_prior.category_vectors` from the training rows' co-occurrence of
    categories within users) and ``prior_scale`` learned. The paper's "only first stage (soft)" searches with
    embeddings pre-trained in a separate run (Table 3); a co-occurrence prior is a cheaper pre-training that
    needs no labels: categories a user's lasting interests span (a topic) co-occur in users' histories, so
    their vectors are close and the search ranks the candidate topic's behaviors first from the start, where
    the jointly trained e_i . e_a first learns the category only.

    Args:
        mode: "hard" or "soft".
        k: behaviors to keep (soft); for hard, None keeps every matching position.
        behavior_dim: E (soft only).
        proj_dim: P, dim of W_b e_i and W_a e_a (soft only).
        aux_hidden: hidden widths of the auxiliary MLP (soft only).
        aux_pooling: "softmax" or "sum" (Equation 2), how r weighs e_i in U_r (soft only).
        init: "identity" (r_i starts as e_i . e_a) or "random" (PyTorch's default for W_b, W_a).
        dropout: dropout of the auxiliary MLP.
        prior_dim: width of the category prior (0 = none); ``category_buckets`` rows of it.
        prior_scale: initial weight of the prior in r_i.
    """

    def __init__(self, mode: str, k: int | None = None, behavior_dim: int = 0, proj_dim: int = 16,
                 aux_hidden: Sequence[int] = (200, 80), aux_pooling: str = "softmax",
                 dropout: float = 0.0, init: str = "identity", prior_dim: int = 0,
                 category_buckets: int = 0, prior_scale: float = 4.0) -> None:
        super().__init__()
        if mode not in ("hard", "soft"):
            raise ValueError(f"GSU mode must be 'hard' or 'soft', got {mode!r}")
        if k is not None and k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.mode = mode
        self.k = k
        if mode == "soft":
            if k is None or behavior_dim < 1:
                raise ValueError("soft search needs k and behavior_dim")
            if aux_pooling not in ("softmax", "sum"):
                raise ValueError(f"aux_pooling must be 'softmax' or 'sum', got {aux_pooling!r}")
            self.aux_pooling = aux_pooling
            self.w_b = nn.Linear(behavior_dim, proj_dim, bias=False)
            self.w_a = nn.Linear(behavior_dim, proj_dim, bias=False)
            if init == "identity":
                # r_i starts as the plain inner product e_i . e_a (as far as proj_dim allows), so the first
                # top-K already favours behaviors that share the candidate's category (its embedding).
                for w in (self.w_b, self.w_a):
                    nn.init.eye_(w.weight)
            elif init != "random":
                raise ValueError(f"init must be 'identity' or 'random', got {init!r}")
            self.aux_mlp = MLP(2 * behavior_dim, aux_hidden, out_dim=1, dropout=dropout)
            self.prior_dim = int(prior_dim)
            if self.prior_dim > 0:
                if category_buckets < 2:
                    raise ValueError("a search prior needs category_buckets")
                self.register_buffer("prior", torch.zeros(category_buckets, self.prior_dim))
                self.prior_scale = nn.Parameter(torch.tensor(float(prior_scale)))

    def set_prior(self, vectors: Tensor) -> None:
        """Fill the category prior: ``vectors`` category_buckets X prior_dim, one row per hashed category
        (row 0 padding); rows are normalised to unit length (a zero row stays zero: a category never seen
        gets no prior)."""
        if getattr(self, "prior_dim", 0) == 0:
            raise ValueError("this search unit has no prior (prior_dim = 0)")
        if tuple(vectors.shape) != tuple(self.prior.shape):
            raise ValueError(f"prior of shape {tuple(vectors.shape)}, expected {tuple(self.prior.shape)}")
        norm = vectors.norm(dim=1, keepdim=True).clamp_min(1e-12)
        with torch.no_grad():
            self.prior.copy_((vectors / norm).to(self.prior.dtype))

    def forward(self, embedding: FeatureEmbedding, seq: Behaviors, target_cat: Tensor,
                target_emb: Tensor) -> SearchResult:
        """Args:
            embedding: the shared tables.
            seq: B X L behaviors to search (hard: the hard_* or long_* columns; soft: long_*).
            target_cat: B raw candidate category ids.
            target_emb: B X E e_a.

        Returns:
            SearchResult with K = min(k, L) (hard with k None: K = L).
        """
        if self.mode == "hard":
            return self._hard(embedding, seq, target_cat)
        return self._soft(embedding, seq, target_emb, target_cat)

    def _hard(self, embedding: FeatureEmbedding, seq: Behaviors, target_cat: Tensor) -> SearchResult:
        relevant = seq.mask & (seq.cats == target_cat.unsqueeze(1))
        length = seq.items.shape[1]
        k = length if self.k is None else min(self.k, length)
        # Stable sort keeps newest-first order among the matches (sequences arrive newest first).
        index = torch.sort(relevant.to(torch.int8), dim=1, descending=True, stable=True).indices[:, :k]
        kept = seq.gather(index)
        mask = relevant.gather(1, index)
        return SearchResult(kept, embedding.behaviors(kept), mask, index,
                            scores=relevant.to(torch.float32))

    def relevance(self, behavior_emb: Tensor, target_emb: Tensor) -> Tensor:
        """Soft-search r_i = (W_b e_i) . (W_a e_a).

        Args:
            behavior_emb: B X L X E.
            target_emb: B X E.

        Returns:
            B X L.
        """
        return torch.einsum("blp,bp->bl", self.w_b(behavior_emb), self.w_a(target_emb))

    def _soft(self, embedding: FeatureEmbedding, seq: Behaviors, target_emb: Tensor,
              target_cat: Tensor) -> SearchResult:
        e = embedding.behaviors(seq)
        mask = seq.mask
        scores = self.relevance(e, target_emb)
        related = None
        if self.prior_dim > 0:
            rows = self.prior.shape[0]
            p_i, p_a = self.prior[hash_ids(seq.cats, rows)], self.prior[hash_ids(target_cat, rows)]
            cosine = torch.einsum("blp,bp->bl", p_i, p_a)
            scores = scores + self.prior_scale * cosine
            related = cosine.clamp(0.0, 1.0) * mask.to(cosine.dtype)
        if self.aux_pooling == "softmax":
            weights = masked_softmax(scores, mask)
        else:
            weights = scores * mask.to(scores.dtype)
        u_r = torch.einsum("bl,ble->be", weights, e)
        aux_logit = self.aux_mlp(torch.cat([u_r, target_emb], dim=-1)).squeeze(-1)

        k = min(int(self.k), seq.items.shape[1])  # type: ignore[arg-type]
        ranked = scores.detach().masked_fill(~mask, float("-inf"))
        # Stable: among equal scores the newer behavior wins, and appended padding (scored -inf,
        # sorted last) can never displace a real behavior, so the result ignores extra padding.
        index = torch.sort(ranked, dim=1, descending=True, stable=True).indices[:, :k]
        kept = seq.gather(index)
        kept_emb = e.gather(1, index.unsqueeze(-1).expand(-1, -1, e.shape[-1]))
        return SearchResult(kept, kept_emb, mask.gather(1, index), index, scores=scores,
                            aux_logit=aux_logit, related=related)


class ExactSearchUnit(nn.Module):
    """Section 3.3: multi-head target attention over the K behaviors the GSU kept.

    z_j = e*_j (item ⊕ category), or e*_j ⊕ e^t_j with ``with_time`` (the "+ time info" models).

    Args:
        behavior_dim: E.
        time_dim: D of the time-gap embedding (used only with ``with_time``).
        heads: q.
        proj_dim: P.
        with_time: concatenate the time-gap embedding to each behavior.
    """

    def __init__(self, behavior_dim: int, time_dim: int, heads: int, proj_dim: int,
                 with_time: bool) -> None:
        super().__init__()
        self.with_time = with_time
        self.key_dim = behavior_dim + (time_dim if with_time else 0)
        self.attention = MultiHeadTargetAttention(self.key_dim, behavior_dim, heads, proj_dim)

    @property
    def out_dim(self) -> int:
        """Features of U_lt: H * Z."""
        return self.attention.heads * self.key_dim

    def forward(self, embedding: FeatureEmbedding, found: SearchResult,
                target_emb: Tensor) -> tuple[Tensor, Tensor]:
        """Args:
            embedding: the shared tables (for the time-gap embedding).
            found: the GSU output, B X K.
            target_emb: B X E e_a.

        Returns:
            (U_lt B X (H * Z), attention weights B X H X K).
        """
        z = found.embeddings
        if self.with_time:
            z = torch.cat([z, embedding.time_gap(found.behaviors.gaps)], dim=-1)
        return self.attention(target_emb, z, found.mask)

