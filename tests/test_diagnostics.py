"""Search diagnostics: exact on a hand-made batch, and soft search learning to retrieve a topic."""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from sim.training.diagnostics import (hard_search_selection, item_topic_lookup, metrics,  # noqa: E402
                                      tally_batch)
from sim.training.evaluation import oracle_metrics  # noqa: E402
from sim.models import build_model  # noqa: E402

# Items 1..9: topic of item i is 1 for i <= 5, else 2; item 9 is not in the topic table.
TOPICS = item_topic_lookup(np.arange(1, 9), np.array([1, 1, 1, 1, 1, 2, 2, 2]))


def test_tally_is_exact_on_a_hand_made_batch():
    # Row 0: candidate item 1 (cat 10, topic 1). Long sequence (newest first): items 2(c10) 6(c20) 3(c10)
    # 4(c30) 0. Soft search kept positions [1, 3, 0]; with K = 3, hard search keeps positions 0 and 2.
    # Row 1: candidate item 6 (cat 20, topic 2). Sequence 9(c20) 7(c40) 0 0 0; soft kept [0, 1, 2] with the
    # third a padded slot.
    batch = {"item_id": torch.tensor([1, 6]), "category_id": torch.tensor([10, 20]),
             "long_items": torch.tensor([[2, 6, 3, 4, 0], [9, 7, 0, 0, 0]]),
             "long_cats": torch.tensor([[10, 20, 10, 30, 0], [20, 40, 0, 0, 0]])}
    out = {"gsu_index": torch.tensor([[1, 3, 0], [0, 1, 2]]),
           "gsu_mask": torch.tensor([[True, True, True], [True, True, False]])}
    t = tally_batch(batch, out, "soft", TOPICS)
    # kept 5 real; same category: row 0 position 0 (c10), row 1 position 0 (c20) -> 2.
    # topic known: row 0 items 6, 4, 2 (all known), row 1 item 9 unknown, item 7 known -> 4;
    # same topic: row 0 items 4, 2 (topic 1) -> 2, row 1 item 7 (topic 2) -> 1: 3.
    # hard picks: row 0 positions 0, 2 (2 picks), row 1 position 0 (1 pick) -> 3; soft has row 0 position 0
    # and row 1 position 0 -> 2.
    assert t.tolist() == [5, 2, 4, 3, 3, 2]
    m = metrics(t, "soft", has_topics=True)
    assert m == pytest.approx({"topk_same_category": 2 / 5, "topk_same_topic": 3 / 4, "hard_soft_overlap": 2 / 3})
    # Hard search keeps the candidate's category by construction; without topics no topic figure.
    hard = {"item_id": batch["item_id"], "category_id": batch["category_id"],
            "hard_items": torch.tensor([[2, 3, 0], [9, 0, 0]]), "hard_cats": torch.tensor([[10, 10, 0], [20, 0, 0]])}
    hout = {"gsu_index": torch.tensor([[0, 1, 2], [0, 1, 2]]),
            "gsu_mask": torch.tensor([[True, True, False], [True, False, False]])}
    assert metrics(tally_batch(hard, hout, "hard", None), "hard", has_topics=False) == {"topk_same_category": 1.0}


def test_hard_search_selection_keeps_the_newest_k_of_the_category():
    sel = hard_search_selection(torch.tensor([[5, 6, 7, 8, 0]]), torch.tensor([[1, 2, 1, 1, 1]]),
                                torch.tensor([1]), k=2)
    assert sel.tolist() == [[True, False, True, False, False]]


def test_oracle_metrics_skip_data_without_an_oracle():
    pred = {"label": np.array([0, 1, 0, 1]), "p_click": np.array([0.1, 0.9, 0.2, 0.8]),
            "p_click_short": np.array([np.nan] * 4)}
    assert oracle_metrics(pred) == {"oracle_auc": 1.0}


PLANT = 8  # behaviors of the candidate's topic in a clicked row (of 20); see the learning test


def _topic_batch(rng: np.random.Generator, b: int = 256, length: int = 20, n_cats: int = 40, n_topics: int = 8,
                 plant: int = PLANT):
    """Topic-structured rows: category c belongs to topic (c - 1) mod 8 + 1. A clicked row holds ``plant``
    behaviors of the candidate's topic in *other* categories than the candidate's; every other behavior is
    of another topic. Only a search that learned which categories share a topic finds the evidence."""
    topic = lambda c: (c - 1) % n_topics + 1  # noqa: E731
    cand_cat = rng.integers(1, n_cats + 1, b)
    cand_topic = topic(cand_cat)[:, None]
    other_topic = (cand_topic - 1 + rng.integers(1, n_topics, (b, length))) % n_topics + 1
    cats = other_topic + n_topics * rng.integers(0, n_cats // n_topics, (b, length))
    label = rng.random(b) < 0.5
    for r in np.nonzero(label)[0]:
        c = cand_topic[r, 0] + n_topics * rng.integers(0, n_cats // n_topics, plant)
        cats[r, rng.choice(length, plant, replace=False)] = np.where(c == cand_cat[r], (c + n_topics - 1) % n_cats + 1, c)
    items = cats + n_cats * rng.integers(0, 20, (b, length))
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).long()  # noqa: E731
    empty = torch.zeros(b, 1, dtype=torch.long)
    batch = {"item_id": t(cand_cat + n_cats * rng.integers(0, 20, b)), "category_id": t(cand_cat),
             "label": t(label.astype(np.int64)), "long_items": t(items), "long_cats": t(cats),
             "long_gaps": t(np.ones_like(items)), "short_items": empty, "short_cats": empty, "short_gaps": empty}
    all_items = np.arange(1, n_cats * 21)
    return batch, item_topic_lookup(all_items, topic((all_items - 1) % n_cats + 1))


@pytest.mark.parametrize("threads", [1, 2])
def test_soft_search_learns_to_retrieve_the_candidates_topic(threads):
    """400 steps of sim_soft (default aux pooling) raise topk_same_topic from its value at initialisation
    (chance: the topic's share of a clicked row, 8 of 20, over half the rows, about 0.2) towards its
    ceiling (about 0.5: unclicked rows hold no behavior of the topic), on one thread and on two.

    Learning is a sudden take-off whose step depends on the seed and on the order floating-point sums
    run in (torch's thread count, the CPU). With 4 planted behaviors of 20 it came anywhere between 200
    and more than 1,200 steps over seeds 0-6 on one thread, and this test (then 400 steps, seed 0)
    failed on one thread (0.300 against 0.311) where it passed on two. With 8 of 20 it came within
    150-200 steps for seeds 0-7 on one thread and on two, after 400 steps at 0.44-0.48, 0.25-0.29 above
    the start: the 0.2 asked keeps a margin whatever the thread count."""
    torch.set_num_threads(threads)  # the autouse fixture (conftest.py) restores the count afterwards
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    model = build_model("sim_soft", {"item_buckets": 1009, "category_buckets": 101, "emb_dim": 8,
                                     "mlp_dims": [32, 16], "attention_dims": [16], "soft_k": 4,
                                     "gsu_proj_dim": 16, "esu_proj_dim": 8})
    fixed, topics = _topic_batch(np.random.default_rng(99), b=512, plant=PLANT)

    def same_topic() -> float:
        model.eval()
        with torch.no_grad():
            out = model(fixed)
        return metrics(tally_batch(fixed, out, "soft", topics), "soft", True)["topk_same_topic"]

    before = same_topic()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    model.train()
    for _ in range(400):
        batch, _ = _topic_batch(rng, plant=PLANT)
        loss = model.loss(model(batch), batch["label"])
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = same_topic()
    assert before < 0.25 and after > before + 0.2, (before, after)
