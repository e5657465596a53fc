"""Re-batching the reader's row groups: every row once, reproducible order, batches cut to their longest
real sequence, rows of similar length grouped when asked."""
from __future__ import annotations

from collections import namedtuple

import numpy as np

from sim.adapters.petastorm_io import iter_batches

Group = namedtuple("Group", ["row", "long_items", "long_cats", "long_len"])
COLUMNS = list(Group._fields)


def groups(sizes=(300, 170), cap: int = 40, seed: int = 0) -> list[Group]:
    """Row groups like the samples': newest-first sequences padded with 0 to ``cap``."""
    rng = np.random.default_rng(seed)
    out, start = [], 0
    for n in sizes:
        lengths = rng.integers(0, cap + 1, n)
        items = np.where(np.arange(cap) < lengths[:, None], rng.integers(1, 1000, (n, cap)), 0)
        out.append(Group(np.arange(start, start + n), items, items % 7 * (items > 0), lengths))
        start += n
    return out


def test_every_row_once_reproducible_and_trimmed():
    g = groups()
    def run(**kw):
        return list(iter_batches(iter(g), COLUMNS, 32, shuffle_seed=5, trim=("long",), **kw))
    for kw in ({}, {"bucket_batches": 4}):
        batches = run(**kw)
        rows = np.concatenate([b["row"] for b in batches])
        assert sorted(rows) == list(range(470)), kw
        assert [b["row"].tolist() for b in run(**kw)] == [b["row"].tolist() for b in batches], kw
        for b in batches:
            width = b["long_items"].shape[1]
            assert width == max(1, int(b["long_len"].max()))  # cut to the longest real sequence
            assert b["long_cats"].shape[1] == width and b["long_len"].ndim == 1
            # Nothing real was cut: every row keeps its whole sequence.
            assert (np.count_nonzero(b["long_items"], axis=1) == b["long_len"]).all()


def test_bucketing_groups_similar_lengths():
    g = groups(sizes=(2000,))
    def spread(**kw):
        batches = list(iter_batches(iter(g), COLUMNS, 32, shuffle_seed=1, trim=("long",), **kw))
        return np.mean([b["long_len"].max() - b["long_len"].min() for b in batches]), batches
    plain, _ = spread()
    bucketed, batches = spread(bucket_batches=8)
    assert bucketed < plain / 4
    # Batches of one window come in shuffled order, not sorted by length.
    maxima = [b["long_len"].max() for b in batches[:8]]
    assert maxima != sorted(maxima)
