"""Named parts of SIM (Pi et al., CIKM 2020), composed by ``sim.models.sim``.

Paper map:
- ``FeatureEmbedding``: the Embedding layer of Figure 1 (item, category and time-interval embeddings;
  Section 3.3 encodes the time intervals D as E^t).
- ``TargetAttention``: the DIN short-term branch (the paper's "short-term user interest").
- ``MultiHeadTargetAttention``: the attention of the ESU (Section 3.3, Equations (3)-(4)).
- The two search units themselves are in ``sim.models.search``.
- ``MLP``: the Embedding&MLP over-arch (200 x 80 x 1 logit; the paper's 2-way softmax is equivalent).
- ``masked_mean``: the avg-pooling baselines ("Avg-Pooling Long DIN", "only first stage").

Shape legend used in the docstrings: B batch size, L behavior sequence length (any of S, K, L of the
samples table), K number of behaviors kept by a search, D embedding dim (``emb_dim``), E behavior
embedding dim (2 * D: item ⊕ category), Z ESU input dim (E, or E + D with time info), H number of heads,
P projection dim.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor, nn


def hash_ids(x: Tensor, num_buckets: int) -> Tensor:
    """Map raw ids to embedding rows without a dictionary; row 0 is reserved for padding.

    Catalogs have tens of millions of items and ids up to ~1e9, so a driver-side id -> row map is
    out (DESIGN.md "Rules"); collisions are the price of a bounded table.

    Args:
        x: raw ids of any shape, int32 or int64; 0 means padding.
        num_buckets: rows of the embedding table (>= 2).

    Returns:
        Tensor of the same shape: ``x % (num_buckets - 1) + 1`` where ``x > 0``, else 0.
    """
    if num_buckets < 2:
        raise ValueError(f"num_buckets must be >= 2, got {num_buckets}")
    return torch.where(x > 0, x % (num_buckets - 1) + 1, torch.zeros_like(x))


def masked_softmax(scores: Tensor, mask: Tensor, dim: int = -1) -> Tensor:
    """Softmax over ``dim`` that gives padded positions a weight of exactly 0.

    A row with no real position gets all-zero weights (not NaN), so a user with no behavior in
    the candidate's category contributes a zero interest vector.

    Args:
        scores: attention logits, e.g. B X L or B X H X L.
        mask: bool, broadcastable to ``scores``; True at real positions.

    Returns:
        Weights of the shape of ``scores``; each row sums to 1 over real positions (or is all 0).
    """
    # finfo.min rather than -inf: a row that is all padding would give NaN with -inf.
    filled = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    weights = torch.softmax(filled, dim=dim)
    # exp(min - max) already underflows to 0 when the row has a real position; the multiply makes
    # the all-padding rows exactly 0 too.
    return weights * mask.to(weights.dtype)


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Average of the real positions of a sequence (the avg-pooling baselines).

    Args:
        values: B X L X E.
        mask: B X L bool, True at real positions.

    Returns:
        B X E; zeros for a row with no real position.
    """
    m = mask.to(values.dtype).unsqueeze(-1)
    total = (values * m).sum(dim=1)
    count = m.sum(dim=1).clamp_min(1.0)
    return total / count


@dataclass
class Behaviors:
    """One behavior sequence of a batch (ids as the samples table stores them).

    Attributes:
        items: B X L raw item ids, 0 = padding.
        cats: B X L raw category ids.
        gaps: B X L time-gap bucket ids in [0, time_gap_buckets).
    """

    items: Tensor
    cats: Tensor
    gaps: Tensor

    @property
    def mask(self) -> Tensor:
        """B X L bool, True at real behaviors."""
        return self.items > 0

    def gather(self, index: Tensor) -> "Behaviors":
        """Positions ``index`` (B X K) of every field, e.g. the behaviors a search kept."""
        return Behaviors(self.items.gather(1, index), self.cats.gather(1, index),
                         self.gaps.gather(1, index))

    def truncate(self, k: int) -> "Behaviors":
        """The first (newest) ``k`` positions."""
        return Behaviors(self.items[:, :k], self.cats[:, :k], self.gaps[:, :k])


class FeatureEmbedding(nn.Module):
    """Item, category and time-gap bucket embeddings shared by every branch.

    GSU and ESU share these tables, as the paper trains them "simultaneously" with shared
    embedding params (Section 3.1). A behavior or a candidate is e = item ⊕ category (E = 2D).

    Args:
        item_buckets: rows of the item table (raw ids are hashed into them).
        category_buckets: rows of the category table.
        time_gap_buckets: rows of the time-gap table; bucket ids index it directly.
        emb_dim: D.
    """

    def __init__(self, item_buckets: int, category_buckets: int, time_gap_buckets: int,
                 emb_dim: int) -> None:
        super().__init__()
        self.item_buckets = item_buckets
        self.category_buckets = category_buckets
        self.emb_dim = emb_dim
        self.item = nn.Embedding(item_buckets, emb_dim, padding_idx=0)
        self.category = nn.Embedding(category_buckets, emb_dim, padding_idx=0)
        self.time_gap = nn.Embedding(time_gap_buckets, emb_dim, padding_idx=0)
        for table in (self.item, self.category, self.time_gap):
            # Small init: the default N(0, 1) makes the first attention logits saturate.
            nn.init.normal_(table.weight, std=0.05)
            with torch.no_grad():
                table.weight[0].zero_()

    @property
    def behavior_dim(self) -> int:
        """E = 2D."""
        return 2 * self.emb_dim

    def items_and_cats(self, items: Tensor, cats: Tensor) -> Tensor:
        """e = item ⊕ category embedding.

        Args:
            items: raw item ids, B or B X L.
            cats: raw category ids, same shape.

        Returns:
            B X E or B X L X E.
        """
        return torch.cat([self.item(hash_ids(items, self.item_buckets)),
                          self.category(hash_ids(cats, self.category_buckets))], dim=-1)

    def behaviors(self, seq: Behaviors, with_time: bool = False) -> Tensor:
        """Embed a behavior sequence.

        Args:
            seq: B X L behaviors.
            with_time: append the time-gap embedding e^t (z_j = e*_j ⊕ e^t_j, Section 3.3).

        Returns:
            B X L X E, or B X L X (E + D) with time.
        """
        e = self.items_and_cats(seq.items, seq.cats)
        if with_time:
            e = torch.cat([e, self.time_gap(seq.gaps)], dim=-1)
        return e


class MLP(nn.Module):
    """Fully connected tower; the last layer is linear (a logit or a feature vector).

    Args:
        in_dim: input features.
        hidden: hidden layer widths, e.g. (200, 80).
        out_dim: output features (1 for a CTR logit).
        dropout: dropout after each hidden activation.
    """

    def __init__(self, in_dim: int, hidden: Sequence[int], out_dim: int = 1,
                 dropout: float = 0.0) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        prev = in_dim
        for width in hidden:
            # One PReLU slope per layer: per-channel PReLU acts on dim 1, which is L for B X L X F input.
            layers += [nn.Linear(prev, width), nn.PReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            prev = width
        layers.append(nn.Linear(prev, out_dim))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """Args:
            x: ... X in_dim.

        Returns:
            ... X out_dim.
        """
        return self.net(x)


class TargetAttention(nn.Module):
    """DIN target attention (Zhou et al., KDD 2018): an MLP scores each behavior against the target.

    The score MLP sees [k, q, k - q, k * q] as in DIN. With ``normalization="none"`` (the DIN paper's
    choice and our default) the pooled interest is sum_j a(e_j, e_a) e_j with the raw scores as weights:
    relaxing sum_j w_j = 1 keeps the *intensity* of an interest (ten recent behaviors in the candidate's
    category weigh more than one). ``"softmax"`` normalises the weights over the real behaviors (common
    in open implementations; the pooled vector then no longer grows with the number of matches).
    Padding gets a weight of exactly 0 either way.

    Args:
        dim: E, the dim of both the behaviors and the target.
        hidden: widths of the score MLP.
        normalization: "none" (DIN) or "softmax".
    """

    NORMALIZATIONS = ("none", "softmax")

    def __init__(self, dim: int, hidden: Sequence[int] = (80, 40), normalization: str = "none") -> None:
        super().__init__()
        if normalization not in self.NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {self.NORMALIZATIONS}, got {normalization!r}")
        self.normalization = normalization
        self.score = MLP(4 * dim, hidden, out_dim=1)

    def forward(self, target: Tensor, keys: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Args:
            target: B X E candidate embedding e_a.
            keys: B X L X E behavior embeddings.
            mask: B X L bool, True at real behaviors.

        Returns:
            (interest B X E, weights B X L).
        """
        q = target.unsqueeze(1).expand_as(keys)
        scores = self.score(torch.cat([keys, q, keys - q, keys * q], dim=-1)).squeeze(-1)
        if self.normalization == "softmax":
            weights = masked_softmax(scores, mask)
        else:
            weights = scores * mask.to(scores.dtype)
        return torch.einsum("bl,ble->be", weights, keys), weights


class MultiHeadTargetAttention(nn.Module):
    """Equations (3)-(4): att_i = softmax_j((W_b^i z_j) . (W_a^i e_a)), head_i = sum_j att_ij z_j.

    Heads sum the raw z_j (not a projection of it), as the paper writes; the dot product is scaled
    by 1/sqrt(P) to keep the softmax out of saturation at init.

    Args:
        key_dim: Z, dim of z_j.
        query_dim: E, dim of e_a.
        heads: q, number of heads.
        proj_dim: P, dim of each head's W_b^i / W_a^i projection.
    """

    def __init__(self, key_dim: int, query_dim: int, heads: int, proj_dim: int) -> None:
        super().__init__()
        if heads < 1:
            raise ValueError(f"heads must be >= 1, got {heads}")
        self.heads = heads
        self.proj_dim = proj_dim
        self.w_b = nn.Linear(key_dim, heads * proj_dim, bias=False)
        self.w_a = nn.Linear(query_dim, heads * proj_dim, bias=False)

    def forward(self, target: Tensor, keys: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Args:
            target: B X E candidate embedding e_a.
            keys: B X K X Z behaviors z_j.
            mask: B X K bool, True at real behaviors.

        Returns:
            (U_lt B X (H * Z), weights B X H X K).
        """
        b, k, _ = keys.shape
        kb = self.w_b(keys).view(b, k, self.heads, self.proj_dim)
        qa = self.w_a(target).view(b, self.heads, self.proj_dim)
        scores = torch.einsum("bkhp,bhp->bhk", kb, qa) / self.proj_dim ** 0.5
        weights = masked_softmax(scores, mask.unsqueeze(1))
        heads = torch.einsum("bhk,bkz->bhz", weights, keys)
        return heads.reshape(b, -1), weights
