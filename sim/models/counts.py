"""How many and how recent: the intensity and recency of an interest, which pooling by a softmax or a mean
normalises away.

The ESU's softmax (SIM, Equation 3) and Avg-Pooling's mean give the same vector for one behavior in the
candidate's category and for fifty of them: the pooled vector keeps *what* the user did, not *how often*
nor *how long ago*. The DIN paper keeps its attention weights unnormalised for that reason, and the paper's
production model feeds "other features" to its MLP beside the sequences. Two selectable remedies, both off in
the paper's form:

- ``count_features`` (:func:`sequence_counts`): each part hands the over-arch a few numbers about the sequence
  it reads, next to its interest vector: log counts of its behaviors, of those in the candidate's category and
  of the candidate item itself, and, for a long-term part, the days since the user's last behavior in the
  candidate's category (``d_category``) and the uncapped length of the long window (``long_len``). These are
  the counts a gradient-boosting model on the samples rows uses; a part computes them only from the columns it
  reads already (plus the two scalars), so a short-term model stays short-term.
- ``pool_count`` = "log" (:func:`scale_by_count`): the pooled vector (the ESU's heads, the average of the
  long or searched sequence) is multiplied by log(1 + number of behaviors pooled), so it grows with the
  number of matches as DIN's unnormalised weights do.

Shape legend as in ``sim.models.layers``; F the number of count features.
"""
from __future__ import annotations

import math
from typing import Mapping

import torch
from torch import Tensor

from sim.models.layers import Behaviors

# log1p of the counts and days is divided by this: log(1 + 1,000) ~ 6.9, log(1 + 180) ~ 5.2, so the
# features stay near the scale of the embeddings' products the MLP sees at the start.
LOG_SCALE = 5.0
POOL_COUNTS = ("none", "log")


def _log_count(x: Tensor) -> Tensor:
    return torch.log1p(x.to(torch.float32)) / LOG_SCALE


def recency_features(d_category: Tensor) -> Tensor:
    """B X 2: whether the user has a behavior in the candidate's category in the long window, and
    log(1 + days since the last one) (0 when none).

    Args:
        d_category: B days since the last behavior in the candidate's category, -1 if none.
    """
    has = (d_category >= 0).to(torch.float32)
    return torch.stack([has, _log_count(d_category.clamp_min(0)) * has], dim=-1)


def sequence_counts(seq: Behaviors, item_id: Tensor, category_id: Tensor) -> Tensor:
    """B X 3: log(1 + n) of the sequence's real behaviors, of those in the candidate's category and of
    those of the candidate item.

    Args:
        seq: B X L behaviors (0 = padding).
        item_id, category_id: B the candidate's raw ids.
    """
    mask = seq.mask
    same_cat = mask & (seq.cats == category_id.unsqueeze(1))
    same_item = mask & (seq.items == item_id.unsqueeze(1))
    return _log_count(torch.stack([mask.sum(1), same_cat.sum(1), same_item.sum(1)], dim=-1))


SHORT_FEATURES = 3          # sequence_counts of the short sequence
LONG_FEATURES = 3 + 1 + 2   # sequence_counts, log long_len, recency_features
RELATED_FEATURES = 3        # related_features
# A behavior at least this related (prior cosine) counts for the newest related behavior.
RELATED_AT = 0.5
# Time-gap buckets are divided by this (the default's 64 buckets, of which about 13 are used).
GAP_SCALE = 16.0


def related_features(seq: Behaviors, related: Tensor) -> Tensor:
    """B X ``RELATED_FEATURES``: soft search's own intensity and recency, from how related each behavior is
    to the candidate (``related`` B X L in [0, 1], 0 at padding): log(1 + its sum), whether any behavior is
    at least ``RELATED_AT`` related, and how old the newest of those is: its time-gap bucket when the
    sequence carries gaps, else log(1 + its position) (sequences are newest first). Hard search's count and
    ``d_category`` are the same two figures for the relevance "same category"."""
    close = related >= RELATED_AT
    has = close.any(dim=1)
    first = torch.argmax(close.to(torch.int8), dim=1)  # the newest related position (0 when none)
    gap = seq.gaps.gather(1, first.unsqueeze(1)).squeeze(1)
    age = torch.where(gap > 0, gap.to(torch.float32) / GAP_SCALE, _log_count(first))
    hasf = has.to(torch.float32)
    return torch.stack([_log_count(related.sum(1)), hasf, age * hasf], dim=-1)


def long_features(seq: Behaviors, batch: Mapping[str, Tensor], related: Tensor | None = None) -> Tensor:
    """B X ``LONG_FEATURES`` (+ ``RELATED_FEATURES`` with ``related``): the counts of the searched or long
    sequence, the uncapped length of the long window and the candidate category's recency."""
    parts = [sequence_counts(seq, batch["item_id"], batch["category_id"]),
             _log_count(batch["long_len"].clamp_min(0)).unsqueeze(-1),
             recency_features(batch["d_category"])]
    if related is not None:
        parts.append(related_features(seq, related))
    return torch.cat(parts, dim=-1)


def scale_by_count(pooled: Tensor, mask: Tensor) -> Tensor:
    """``pooled`` (B X F, a mean or softmax average over the real positions of ``mask`` B X K) times
    log(1 + number of real positions): one behavior keeps its vector times log 2, fifty times log 51."""
    n = mask.sum(1, keepdim=True).to(pooled.dtype)
    return pooled * torch.log1p(n) / math.log(2.0)


__all__ = ["LONG_FEATURES", "POOL_COUNTS", "RELATED_FEATURES", "SHORT_FEATURES", "long_features",
           "recency_features", "related_features", "scale_by_count", "sequence_counts"]
