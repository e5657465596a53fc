"""Search diagnostics: what the General Search Unit retrieves (SIM Section 3.2, and Section 5.5's overlap
of hard and soft search).

Logged per epoch on the validation impressions for every search model (``sim.train``) and tabulated by
``python -m sim.compare``:

- ``gsu_auc``: AUC of the soft GSU's auxiliary CTR head (Equation 2); soft search only.
- ``topk_same_category``: share of the retrieved top-K behaviors whose category is the candidate's (1 by
  construction for hard search).
- ``topk_same_topic``: the same for the latent topic of the synthetic data (``item_topics``, hidden from
  the models); absent for data without topics.
- ``hard_soft_overlap``: share of the hard-search result (the first K behaviors of the candidate's
  category in the searched sequence, newest first, K = the soft search's K) that soft search also
  retrieves; soft search only. The paper reports that hard search covered 75% of soft search's picks
  in its industrial data, the reason hard search was deployed.

Each ratio is a micro average: sums over every (impression, retrieved behavior) pair of the evaluation
set, added up over the ranks before dividing, so batches and ranks of any size weigh by their pairs.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np
import torch
from torch import Tensor

DIAGNOSTICS = ("gsu_auc", "topk_same_category", "topk_same_topic", "hard_soft_overlap")

# Order of the sums in a tally vector.
_FIELDS = ("kept", "same_category", "topic_known", "same_topic", "hard", "hard_in_soft")


def empty_tally() -> np.ndarray:
    return np.zeros(len(_FIELDS), dtype=np.float64)


def _topics(item_topic: Tensor | None, items: Tensor) -> Tensor | None:
    """Topic of raw item ids (0 where unknown: padding or an id beyond the table)."""
    if item_topic is None:
        return None
    inside = (items > 0) & (items < item_topic.shape[0])
    return torch.where(inside, item_topic[items.clamp(0, item_topic.shape[0] - 1)], torch.zeros_like(items))


def hard_search_selection(items: Tensor, cats: Tensor, target_cat: Tensor, k: int) -> Tensor:
    """Positions hard search keeps in a newest-first sequence: the first ``k`` real behaviors of the
    candidate's category.

    Args:
        items, cats: B X L.
        target_cat: B.
        k: K.

    Returns:
        B X L bool.
    """
    relevant = (items > 0) & (cats == target_cat.unsqueeze(1))
    return relevant & (torch.cumsum(relevant.to(torch.int32), dim=1) <= k)


def tally_batch(batch: Mapping[str, Tensor], out: Mapping[str, Tensor], mode: str,
                item_topic: Tensor | None = None) -> np.ndarray:
    """Sums of one batch for :func:`metrics`.

    Args:
        batch: the samples columns as tensors (``item_id``, ``category_id``, ``long_*`` / ``hard_*``).
        out: the model's outputs with ``gsu_index`` and ``gsu_mask`` (B X K positions kept in the
            searched sequence: ``long_*`` for soft search, ``hard_*`` for hard search).
        mode: "hard" or "soft".
        item_topic: int64 tensor mapping item id -> topic (0 = unknown), or None.

    Returns:
        float64 vector of the sums named in ``_FIELDS``.
    """
    source = "long" if mode == "soft" else "hard"
    items, cats = batch[f"{source}_items"], batch[f"{source}_cats"]
    index, mask = out["gsu_index"], out["gsu_mask"]
    kept_items, kept_cats = items.gather(1, index), cats.gather(1, index)
    t = empty_tally()
    t[0] = float(mask.sum())
    t[1] = float((mask & (kept_cats == batch["category_id"].unsqueeze(1))).sum())
    kept_topic, cand_topic = _topics(item_topic, kept_items), _topics(item_topic, batch["item_id"])
    if kept_topic is not None and cand_topic is not None:
        known = mask & (kept_topic > 0) & (cand_topic > 0).unsqueeze(1)
        t[2] = float(known.sum())
        t[3] = float((known & (kept_topic == cand_topic.unsqueeze(1))).sum())
    if mode == "soft":
        hard = hard_search_selection(items, cats, batch["category_id"], index.shape[1])
        soft = torch.zeros_like(hard).scatter(1, index, mask)
        t[4] = float(hard.sum())
        t[5] = float((hard & soft).sum())
    return t


def metrics(tally: np.ndarray, mode: str, has_topics: bool) -> dict[str, float]:
    """The diagnostics of summed tallies (``gsu_auc`` comes from the gathered scores, not from here)."""
    d = dict(zip(_FIELDS, tally))
    out = {"topk_same_category": d["same_category"] / d["kept"] if d["kept"] else float("nan")}
    if has_topics:
        out["topk_same_topic"] = d["same_topic"] / d["topic_known"] if d["topic_known"] else float("nan")
    if mode == "soft":
        out["hard_soft_overlap"] = d["hard_in_soft"] / d["hard"] if d["hard"] else float("nan")
    return out


def item_topic_lookup(item_ids: np.ndarray, topic_ids: np.ndarray) -> Tensor:
    """A dense id -> topic tensor from the ``item_topics`` table's columns (synthetic catalogs only)."""
    table = np.zeros(int(item_ids.max()) + 1 if len(item_ids) else 1, dtype=np.int64)
    table[item_ids.astype(np.int64)] = topic_ids.astype(np.int64)
    return torch.from_numpy(table)
