"""Soft search's category prior (sim.training.search_prior): co-occurrence of categories within users'
histories recovers the topics a user's interests span, from the training rows alone."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from sim.models import build_model, hash_ids
from sim.formats.packing import pack
from sim.training.search_prior import category_vectors, fill_search_prior, user_category_rows
from tests.test_models import SMALL

TOPICS, PER_TOPIC = 8, 5  # category c is in topic (c - 1) % TOPICS, as the generator's


def _histories(users: int, seed: int = 0) -> list[np.ndarray]:
    """Each user holds two topics; a behavior is in a category of one of them (90%) or any (10%)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(users):
        held = rng.choice(TOPICS, 2, replace=False)
        n = int(rng.integers(20, 60))
        topic = held[rng.integers(0, 2, n)]
        cats = 1 + topic + TOPICS * rng.integers(0, PER_TOPIC, n)
        noise = rng.random(n) < 0.1
        cats[noise] = rng.integers(1, TOPICS * PER_TOPIC + 1, noise.sum())
        out.append(cats)
    return out


def _write(tmp_path, histories: list[np.ndarray], rows_per_user: int = 2) -> list[tuple[str, int]]:
    """Training rows of each user: older rows hold a prefix of the newest one's history."""
    rows = []
    for u, cats in enumerate(histories, start=1):
        for r in range(rows_per_user):
            keep = len(cats) if r == rows_per_user - 1 else len(cats) // 3
            rows.append({"user_id": u, "ts": 1_000 + r, "long_cats": pack(cats[:keep])})
    frame = pd.DataFrame(rows).sample(frac=1.0, random_state=1)
    path = str(tmp_path / "part-0.parquet")
    frame.to_parquet(path, row_group_size=97)
    return [(path, len(frame))]


def test_newest_row_of_each_user_only(tmp_path) -> None:
    hist = _histories(30)
    users, cats = user_category_rows(_write(tmp_path, hist), category_buckets=101)
    assert len(users) == sum(len(h) for h in hist)  # the newest row: the whole history, once
    got = np.bincount(users)
    assert sorted(got) == sorted(len(h) for h in hist)
    assert set(cats) <= set(hash_ids(torch.arange(1, 41), 101).tolist())


def test_category_vectors_recover_the_topics(tmp_path) -> None:
    users, cats = user_category_rows(_write(tmp_path, _histories(400)), category_buckets=101)
    vec = category_vectors(users, cats, category_buckets=101, dim=8)
    rows = hash_ids(torch.arange(1, TOPICS * PER_TOPIC + 1), 101).numpy()
    v = vec[rows] / np.linalg.norm(vec[rows], axis=1, keepdims=True)
    sim = v @ v.T
    np.fill_diagonal(sim, -np.inf)
    topic = np.arange(TOPICS * PER_TOPIC) % TOPICS
    nearest = np.argsort(-sim, axis=1)[:, :PER_TOPIC - 1]
    precision = float((topic[nearest] == topic[:, None]).mean())
    assert precision >= 0.9, precision
    assert not vec[0].any()  # padding row stays zero
    assert np.array_equal(vec, category_vectors(users, cats, 101, 8))  # deterministic


@pytest.mark.parametrize("name", ["sim_soft", "gsu_only_soft"])
def test_the_prior_makes_soft_search_retrieve_the_candidates_topic(tmp_path, name: str) -> None:
    """Before any training step, soft search with the filled prior keeps behaviors of the candidate's topic;
    without it (or with an empty prior) it keeps its category at best."""
    hist = _histories(300, seed=2)
    files = _write(tmp_path, hist)
    rng = np.random.default_rng(3)
    b, length = 64, 40
    cats = np.zeros((b, length), dtype=np.int64)
    for r in range(b):
        h = hist[r][:length]
        cats[r, :len(h)] = h
    cand = cats[np.arange(b), rng.integers(0, 10, b)]
    items = np.where(cats > 0, 1000 * cats + rng.integers(1, 50, cats.shape), 0)
    batch = {"item_id": torch.from_numpy(cand * 1000 + 77), "category_id": torch.from_numpy(cand),
             "long_items": torch.from_numpy(items), "long_cats": torch.from_numpy(cats),
             "short_items": torch.from_numpy(items[:, :3]), "short_cats": torch.from_numpy(cats[:, :3])}
    shares = {}
    for prior in ("none", "cooc"):
        torch.manual_seed(0)
        model = build_model(name, {**SMALL, "category_buckets": 101, "soft_k": 8, "gsu_prior": prior,
                                   "gsu_prior_dim": 8}).eval()
        assert fill_search_prior(model, files) == (prior == "cooc")
        with torch.no_grad():
            out = model(batch)
        kept = batch["long_cats"].gather(1, out["gsu_index"])
        same = ((kept - 1) % TOPICS == (batch["category_id"].unsqueeze(1) - 1) % TOPICS) & out["gsu_mask"]
        shares[prior] = float(same.sum() / out["gsu_mask"].sum())
    assert shares["cooc"] > shares["none"] + 0.15, shares
    assert shares["cooc"] > 0.7, shares
