"""The count-keeping variants (sim.models.counts): what the paper's softmax / mean pooling normalises away,
they keep."""
from __future__ import annotations

import math

import pytest
import torch

from sim.models import build_model
from sim.models.counts import recency_features, scale_by_count, sequence_counts
from sim.models.layers import Behaviors
from tests.test_models import SMALL, make_batch

HARD_MODELS = ("gsu_only_hard", "sim_hard", "sim_hard_time")


def _duplicate(batch: dict, seq: str) -> dict:
    """Every behavior of ``seq`` twice in a row (newest first is kept), padding at the end."""
    out = dict(batch)
    for f in ("items", "cats", "gaps"):
        out[f"{seq}_{f}"] = batch[f"{seq}_{f}"].repeat_interleave(2, dim=1)
    return out


def _logits(name: str, batch: dict, **cfg) -> torch.Tensor:
    torch.manual_seed(0)
    model = build_model(name, {**SMALL, **cfg}).eval()
    with torch.no_grad():
        return model(batch)["logit"]


@pytest.mark.parametrize("name", HARD_MODELS)
def test_duplicated_matches_change_the_count_keeping_forms_only(name: str) -> None:
    """Each behavior of the candidate's category twice: the paper's form (softmax in the ESU, mean in the
    first stage) gives the same logit; the log-count pooling and the count features do not."""
    batch = make_batch(b=32, k=8, seed=5)
    batch["d_category"] = torch.randint(-1, 90, (32,))
    doubled = _duplicate(batch, "hard")
    has = batch["hard_items"].gt(0).any(1)
    assert has.sum() > 5
    paper = _logits(name, batch), _logits(name, doubled)
    assert torch.allclose(paper[0], paper[1], atol=1e-5)
    for cfg in ({"pool_count": "log"}, {"count_features": True}):
        a, b = _logits(name, batch, **cfg), _logits(name, doubled, **cfg)
        assert torch.allclose(a[~has], b[~has], atol=1e-5)  # nothing to duplicate
        assert (a[has] - b[has]).abs().min() > 1e-6, cfg


def test_avg_pooling_keeps_the_count_of_the_long_sequence() -> None:
    batch = make_batch(b=32, seed=6)
    doubled = _duplicate(batch, "long")
    has = batch["long_items"].gt(0).any(1)
    same = _logits("avgpool_long_din", batch), _logits("avgpool_long_din", doubled)
    assert torch.allclose(same[0], same[1], atol=1e-5)
    a, b = (_logits("avgpool_long_din", x, pool_count="log") for x in (batch, doubled))
    assert (a[has] - b[has]).abs().min() > 1e-6


def test_sequence_counts_and_recency_by_hand() -> None:
    items = torch.tensor([[5, 7, 5, 9, 0], [0, 0, 0, 0, 0]])
    cats = torch.tensor([[1, 2, 1, 1, 0], [0, 0, 0, 0, 0]])
    seq = Behaviors(items, cats, torch.zeros_like(items))
    got = sequence_counts(seq, torch.tensor([5, 5]), torch.tensor([1, 1]))
    want = torch.log1p(torch.tensor([[4.0, 3.0, 2.0], [0.0, 0.0, 0.0]])) / 5.0
    assert torch.allclose(got, want)
    rec = recency_features(torch.tensor([-1, 0, 30]))
    assert torch.allclose(rec, torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, math.log(31) / 5.0]]))
    pooled = scale_by_count(torch.ones(2, 3), torch.tensor([[True, False], [True, True]]))
    assert torch.allclose(pooled[:, 0], torch.tensor([1.0, math.log(3) / math.log(2)]))


def test_a_short_term_model_with_counts_stays_short_term() -> None:
    """DIN with count features reads only its short sequence and the candidate."""
    cols = build_model("din", {**SMALL, "count_features": True}).input_columns
    assert set(cols) == {"item_id", "category_id", "short_items", "short_cats"}
    long_cols = build_model("sim_hard", {**SMALL, "count_features": True}).input_columns
    assert {"long_len", "d_category"} <= set(long_cols)


def test_related_features_by_hand() -> None:
    """Soft search's intensity and recency by its prior: the sum of the related weights, and the newest
    behavior at least half related (its gap bucket, or its position without gaps)."""
    from sim.models.counts import GAP_SCALE, related_features
    items = torch.tensor([[3, 4, 5, 6], [3, 4, 0, 0], [3, 4, 5, 0]])
    gaps = torch.tensor([[2, 5, 9, 11], [0, 0, 0, 0], [0, 0, 0, 0]])
    related = torch.tensor([[0.1, 0.2, 0.9, 0.6], [0.2, 0.0, 0.0, 0.0], [0.0, 0.0, 0.7, 0.0]])
    got = related_features(Behaviors(items, items, gaps), related)
    want = torch.tensor([[math.log1p(1.8) / 5.0, 1.0, 9 / GAP_SCALE],
                         [math.log1p(0.2) / 5.0, 0.0, 0.0],
                         [math.log1p(0.7) / 5.0, 1.0, math.log1p(2) / 5.0]])
    assert torch.allclose(got, want)


def test_soft_search_with_a_prior_hands_its_related_count_to_the_over_arch() -> None:
    """More behaviors of categories the prior relates to the candidate's change the output of the
    count-keeping soft model, through its related features."""
    batch = make_batch(b=8, long=12, n_cats=6, seed=9)
    torch.manual_seed(0)
    model = build_model("sim_soft", {**SMALL, "count_features": True, "gsu_prior": "cooc",
                                     "gsu_prior_dim": 4}).eval()
    assert model.long_term.out_dim == model.esu.out_dim + 6 + 3
    prior = torch.zeros_like(model.gsu.prior)
    prior[:, 0] = 1.0  # every category related to every other
    model.gsu.set_prior(prior)
    with torch.no_grad():
        related_all = model(batch)["logit"]
        model.gsu.set_prior(torch.eye(*prior.shape))  # each category only to itself
        related_own = model(batch)["logit"]
    has = batch["long_items"].gt(0).any(1)
    assert (related_all[has] - related_own[has]).abs().max() > 1e-5
