import numpy as np
import pytest

from sim.training.metrics import auc, gauc, logloss


def test_auc_matches_pairwise_definition():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    s = np.round(rng.random(200), 1)  # many ties
    pos, neg = s[y == 1], s[y == 0]
    pairwise = ((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) / (
        len(pos) * len(neg))
    assert auc(y, s) == pytest.approx(pairwise)
    assert np.isnan(auc(np.ones(3), np.arange(3)))


def test_gauc_weights_users_by_impressions_and_skips_one_class_users():
    users = np.array([1, 1, 1, 1, 2, 2, 3])
    y = np.array([1, 0, 1, 0, 1, 0, 1])
    s = np.array([0.9, 0.1, 0.2, 0.8, 0.3, 0.7, 0.5])
    # user 1: AUC 0.75 over 4 impressions, user 2: AUC 0 over 2, user 3 skipped.
    assert gauc(users, y, s) == pytest.approx((0.75 * 4 + 0.0 * 2) / 6)


def test_logloss():
    assert logloss(np.array([1, 0]), np.array([0.5, 0.5])) == pytest.approx(np.log(2))


def test_gauc_equals_the_per_user_loop_on_many_users_with_ties():
    """The vectorised gAUC is the impression-weighted mean of each user's own AUC (ties averaged)."""
    rng = np.random.default_rng(3)
    users = rng.integers(0, 500, 20_000)
    y = rng.integers(0, 2, 20_000)
    s = np.round(rng.random(20_000) + 0.3 * y, 1)  # ties within users
    total = weight = 0.0
    for u in np.unique(users):
        m = users == u
        a = auc(y[m], s[m])
        if not np.isnan(a):
            total, weight = total + a * m.sum(), weight + m.sum()
    assert gauc(users, y, s) == pytest.approx(total / weight, abs=1e-12)
    assert np.isnan(gauc(np.array([1, 1, 2]), np.array([1, 1, 0]), np.array([0.1, 0.2, 0.3])))
