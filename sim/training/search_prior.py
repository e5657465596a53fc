"""Soft search's category prior: category vectors from the co-occurrence of categories within users'
histories, computed from the training rows before the first step (no labels, nothing of the validation or
test dates).

The paper's "only first stage (soft)" searches with embeddings pre-trained in a separate run (SIM, Table 3).
This is a cheaper pre-training of the same kind: a user's lasting interests span several categories (a topic
of the synthetic data, co-bought categories of a real catalog), so the categories of one interest appear
together in users' histories. Per user, the newest training row's long sequence gives the user's category
counts; the vectors are the leading principal components (eigenvectors of the category x category
covariance of the users' log-count profiles, each profile normalised to unit length so that a heavy user does
not dominate, scaled by the root of their eigenvalues). Two categories get close vectors when the same users
hold both. On the demo data (200 categories in 40 hidden topics), with 64 dimensions the 4 nearest categories
of every category are in its topic (16 dimensions: 65%; without centring, 64 dimensions: 99% but every pair
of categories at cosine 0.22 on average). ``GeneralSearchUnit.set_prior`` normalises them and adds
their cosine to the search's relevance.
"""
from __future__ import annotations

import logging
from typing import Sequence

import numpy as np

from sim.models.layers import hash_ids

log = logging.getLogger(__name__)

COLUMNS = ("user_id", "ts", "long_cats")


def user_category_rows(files: Sequence[tuple[str, int]], category_buckets: int,
                       batch_size: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """(user index, hashed category) of every behavior in the long sequence of each user's newest training
    row (ties: the last row read), one pair per behavior."""
    import torch

    from sim.training.loader import ShardedLoader

    def loader():
        return ShardedLoader(files, COLUMNS, batch_size=batch_size, shuffle=False, same_steps=False,
                             trim=("long",)).epoch()

    users, ts = [], []
    for batch in loader():
        users.append(batch["user_id"].astype(np.int64))
        ts.append(batch["ts"].astype(np.int64))
    users_all, ts_all = np.concatenate(users), np.concatenate(ts)
    # The newest row of each user: sort by (user, ts) stably, keep each user's last.
    order = np.lexsort((ts_all, users_all))
    last = np.ones(len(order), dtype=bool)
    last[:-1] = users_all[order][1:] != users_all[order][:-1]
    keep = np.zeros(len(order), dtype=bool)
    keep[order[last]] = True
    uniq, user_index = np.unique(users_all, return_inverse=True)
    pairs_u, pairs_c, offset = [], [], 0
    for batch in loader():
        n = len(batch["user_id"])
        rows = np.flatnonzero(keep[offset:offset + n])
        offset += n
        cats = batch["long_cats"][rows].astype(np.int64)
        real = cats > 0
        pairs_u.append(np.repeat(user_index[offset - n + rows], real.sum(1)))
        pairs_c.append(hash_ids(torch.from_numpy(cats[real]), category_buckets).numpy())
    log.info("category prior from %d users' newest training rows", len(uniq))
    return np.concatenate(pairs_u), np.concatenate(pairs_c)


def category_vectors(user_index: np.ndarray, category: np.ndarray, category_buckets: int,
                     dim: int) -> np.ndarray:
    """category_buckets X ``dim`` vectors (float32) from (user, hashed category) pairs; rows of categories
    never seen are zero. Deterministic (a symmetric eigendecomposition, signs fixed by the largest entry)."""
    out = np.zeros((category_buckets, dim), dtype=np.float32)
    if len(category) == 0:
        return out
    used, col = np.unique(category, return_inverse=True)
    n_users = int(user_index.max()) + 1
    counts = np.zeros((n_users, len(used)), dtype=np.float64)
    np.add.at(counts, (user_index, col), 1.0)
    profile = np.log1p(counts)
    profile /= np.maximum(np.linalg.norm(profile, axis=1, keepdims=True), 1e-12)
    # Centred (a PCA): the mean profile, popular categories shared by everyone, would otherwise be the
    # leading direction and make every pair of categories look related.
    profile -= profile.mean(axis=0, keepdims=True)
    gram = profile.T @ profile
    values, vectors = np.linalg.eigh(gram)
    top = np.argsort(values)[::-1][:dim]
    vectors = vectors[:, top] * np.sqrt(np.clip(values[top], 0.0, None))
    # eigh's sign of a vector is arbitrary: make each column's largest-magnitude entry positive.
    signs = np.sign(vectors[np.abs(vectors).argmax(axis=0), np.arange(vectors.shape[1])])
    vectors *= np.where(signs == 0, 1.0, signs)
    out[used, :vectors.shape[1]] = vectors.astype(np.float32)
    return out


def fill_search_prior(model, files: Sequence[tuple[str, int]]) -> bool:
    """Fill the soft search unit's category prior of ``model`` from ``files`` (the training split); False
    when the model has no prior."""
    import torch

    gsu = getattr(model, "gsu", None)
    if gsu is None or getattr(gsu, "prior_dim", 0) == 0:
        return False
    buckets, dim = gsu.prior.shape
    users, cats = user_category_rows(files, buckets)
    gsu.set_prior(torch.from_numpy(category_vectors(users, cats, buckets, dim)))
    return True
