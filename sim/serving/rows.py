"""A scoring request -> the samples rows the samples job would build for impressions at its time, in numpy.

For a user, a request time t and candidates (item, category), each row is what
:func:`sim.samples.transforms.build_sequences` + :func:`~sim.samples.transforms.to_samples` give an
impression of that user at t (time mode, the nightly path): history = UBT(D-1) (a snapshot of the
serving store) + the behaviors of D before t (the store's append path), with the same caps, the same
newest-first order (by time, then item, then category, descending) and the same time-gap buckets.
The short and long sequences depend on the user and t only, so they are built once per request; the
hard-search sequence once per distinct candidate category.

The Spark expressions this mirrors, step by step (sim/samples/transforms.py):

- ``n_all = min(recent_n, nb + #(UBT newest > t - long_days))``, ``all = (day-D before t) ++ (UBT newest)``;
- long = the first ``min(long_cap, |all|)``; short = the prefix of the first ``short_cap`` inside
  (t - short_days, t);
- hard = (day-D before t of the category) ++ (the key's newest K), cut to
  ``min(K, |day of the category| + #(key's newest > t - long_days))``;
- ``long_len = ubt_count - #(first-day behaviors <= t - long_days) + nb``;
- ``d_category`` = whole days since the newest behavior of the category (day D first, else the key's
  ``last_ts``), -1 without one;
- gap bucket of t - ts: ``1 + min(buckets - 2, floor(r * log2(1 + hours)))``, in integers.

Count mode (``windows.mode: count``, the nightly path with count windows) mirrors the count branch:
``all = (day-D before t) ++ (UBT newest)`` cut to ``min(short_count + long_count, |all|)``; short = its first
``min(short_count, |all|)``, long = the ``min(long_count, |all| - short)`` after them; hard = the long
part's behaviors of the category, the first K; ``long_len = ubt_count + nb``; ``d_category`` as above.

A snapshot older than D - 1 (stale) is read the same way with every appended behavior after it; the
rows are then close to, not equal to, the samples job's, and the response says the snapshot's date.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from sim.formats.packing import PACKED_COLUMNS
from sim.serving.store import CategoryRecord, DayBehaviors, UserRecord

SECONDS_PER_DAY = 86400
SECONDS_PER_HOUR = 3600


@dataclass(frozen=True)
class RowSpec:
    """The samples settings a row depends on (sim.samples.contract.SampleSpec.settings), as the
    snapshot's export recorded them. Time mode reads the day windows, count mode the counts."""
    long_days: int
    short_days: int
    short_cap: int
    hard_k: int
    long_cap: int
    time_gap_buckets: int
    time_gap_per_octave: int
    mode: str = "time"
    long_count: int = 0
    short_count: int = 0

    @classmethod
    def from_settings(cls, s: Mapping) -> "RowSpec":
        mode = s.get("windows.mode", "time")
        caps = (int(s["caps.short_cap"]), int(s["caps.hard_k"]), int(s["caps.long_cap"]), int(s["time_gap_buckets"]),
                int(s["time_gap_per_octave"]))
        if mode == "time":
            return cls(int(s["windows.long_days"]), int(s["windows.short_days"]), *caps)
        if mode == "count":
            return cls(0, 0, *caps, mode="count", long_count=int(s["windows.long_count"]),
                       short_count=int(s["windows.short_count"]))
        raise ValueError(f"the snapshot was exported with windows.mode={mode!r}: online scoring builds time- "
                         f"or count-mode rows")

    @property
    def recent_n(self) -> int:
        """sim.ubt.settings.recent_seq_len: in time mode the short sequence is a prefix of the long one;
        in count mode they are disjoint."""
        if self.mode == "count":
            return self.long_count + self.short_count
        return max(self.long_cap, self.short_cap)


@functools.lru_cache(maxsize=16)
def _bucket_edges(num_buckets: int, per_octave: int) -> np.ndarray:
    """edges[k] = the fewest whole hours whose index floor(r * log2(1 + h)) is at least k, k = 0..n-2:
    the smallest x = 1 + h with x ** r >= 2 ** k (exact integers)."""
    edges = []
    for k in range(num_buckets - 1):
        target = 1 << k
        x = max(1, int(round(2 ** (k / per_octave))))
        while x ** per_octave < target:
            x += 1
        while x > 1 and (x - 1) ** per_octave >= target:
            x -= 1
        edges.append(min(x - 1, np.iinfo(np.int64).max))  # beyond: no gap of int64 seconds reaches it
    return np.asarray(edges, dtype=np.int64)


def time_gap_bucket(gap_seconds: np.ndarray, num_buckets: int = 64, per_octave: int = 1) -> np.ndarray:
    """numpy twin of :func:`sim.samples.transforms.time_gap_bucket` for gaps > 0 seconds:
    ``1 + min(num_buckets - 2, floor(r * log2(1 + hours)))`` with hours = whole hours of the gap."""
    hours = np.asarray(gap_seconds, dtype=np.int64) // SECONDS_PER_HOUR
    raw = np.searchsorted(_bucket_edges(num_buckets, per_octave), hours, side="right") - 1
    return (1 + np.minimum(num_buckets - 2, raw)).astype(np.int64)


def _newest_first(ts: np.ndarray, items: np.ndarray, cats: np.ndarray) -> np.ndarray:
    """The order that sorts (ts, item_id, category_id) descending (Spark's sort_array(structs, false))."""
    return np.lexsort((-cats, -items, -ts))


@dataclass
class RequestRows:
    """The samples rows of one request: scalars per candidate, the short and long sequences (one per
    request), the hard sequences (one per distinct category; ``hard_of`` maps a row to its one)."""
    scalars: dict[str, np.ndarray]
    shared: dict[str, np.ndarray]  # short_*, long_*: 1-D, the same for every row
    hard: list[dict[str, np.ndarray]]  # hard_items, hard_cats, hard_gaps per distinct category
    hard_of: np.ndarray

    def __len__(self) -> int:
        return len(self.hard_of)

    def dense(self, columns: Sequence[str]) -> dict[str, np.ndarray]:
        """``columns`` as a batch like training's: scalars int64, sequences padded with 0 to the batch's
        longest row (at least 1), in the dtypes of :data:`sim.formats.packing.PACKED_COLUMNS`."""
        n, out = len(self), {}
        hard_width = max([1, *(len(h["hard_items"]) for h in self.hard)])
        for c in columns:
            if c not in PACKED_COLUMNS:
                out[c] = self.scalars[c].astype(np.int64)
            elif c in self.shared:
                v = self.shared[c]
                row = np.zeros(max(1, len(v)), dtype=PACKED_COLUMNS[c])
                row[:len(v)] = v
                out[c] = np.repeat(row[None, :], n, axis=0)  # writable: torch takes it as it is
            else:
                table = np.zeros((len(self.hard), hard_width), dtype=PACKED_COLUMNS[c])
                for i, h in enumerate(self.hard):
                    table[i, :len(h[c])] = h[c]
                out[c] = table[self.hard_of]
        return out

    def frame(self) -> pd.DataFrame:
        """The rows as a pandas DataFrame, sequences as lists (what the logged pyfunc takes)."""
        data = {c: v for c, v in self.scalars.items()}
        for c, v in self.shared.items():
            data[c] = [v.tolist()] * len(self)
        for c in ("hard_items", "hard_cats", "hard_gaps"):
            lists = [h[c].tolist() for h in self.hard]
            data[c] = [lists[i] for i in self.hard_of]
        return pd.DataFrame(data)


def build_rows(spec: RowSpec, user_id: int, t: int, items: Sequence[int], categories: Sequence[int],
               user: UserRecord | None, keys: Mapping[int, CategoryRecord], after: DayBehaviors,
               impression_ids: Sequence[int] | None = None) -> RequestRows:
    """The samples rows of candidates ``(items[i], categories[i])`` for ``user_id`` at ``t``.

    Args:
        spec: the samples settings (the snapshot's).
        user: the user's record in the snapshot (None: no history in it).
        keys: the snapshot's records of the user's (candidate) categories; absent ones have no history.
        after: the user's behaviors after the snapshot and before ``t`` (the store's append path).
        impression_ids: the rows' ``impression_id`` (default 0..n-1).
    """
    t = int(t)
    items = np.asarray(items, dtype=np.int64)
    cands = np.asarray(categories, dtype=np.int64)
    z = np.zeros(0, dtype=np.int64)
    # Behaviors after the snapshot before t, newest first.
    keep = after.ts < t
    a_ts, a_items, a_cats = after.ts[keep], after.items[keep], after.cats[keep]
    order = _newest_first(a_ts, a_items, a_cats)
    a_ts, a_items, a_cats = a_ts[order], a_items[order], a_cats[order]
    nb = len(a_ts)
    r_ts, r_items, r_cats = (user.r_ts, user.r_items, user.r_cats) if user else (z, z, z)
    if spec.mode == "count":
        return _count_rows(spec, user_id, t, items, cands, user, keys, (a_ts, a_items, a_cats),
                           (r_ts, r_items, r_cats), impression_ids)
    long_start = t - spec.long_days * SECONDS_PER_DAY
    short_start = t - spec.short_days * SECONDS_PER_DAY
    n_all = min(spec.recent_n, nb + int(np.count_nonzero(r_ts > long_start)))
    all_ts = np.concatenate([a_ts, r_ts])[:n_all]
    all_items = np.concatenate([a_items, r_items])[:n_all]
    all_cats = np.concatenate([a_cats, r_cats])[:n_all]
    gaps = time_gap_bucket(t - all_ts, spec.time_gap_buckets, spec.time_gap_per_octave)
    n_long = min(spec.long_cap, len(all_ts))
    n_short = int(np.count_nonzero(all_ts[:spec.short_cap] > short_start))
    shared = {"short_items": all_items[:n_short], "short_cats": all_cats[:n_short], "short_gaps": gaps[:n_short],
              "long_items": all_items[:n_long], "long_cats": all_cats[:n_long], "long_gaps": gaps[:n_long]}
    expired = int(np.count_nonzero(user.first_day_ts <= long_start)) if user else 0
    long_len = (user.ubt_count if user else 0) - expired + nb

    def hard_of_category(k: int, b_ts: np.ndarray, b_items: np.ndarray, rec: CategoryRecord | None):
        h_ts, h_items = (rec.ts, rec.items) if rec else (z, z)
        n_hard = min(spec.hard_k, len(b_ts) + int(np.count_nonzero(h_ts > long_start)))
        return np.concatenate([b_ts, h_ts])[:n_hard], np.concatenate([b_items, h_items])[:n_hard]

    return _assemble(spec, user_id, t, items, cands, keys, (a_ts, a_items, a_cats), shared, n_short, long_len,
                     hard_of_category, impression_ids)


def _count_rows(spec: RowSpec, user_id: int, t: int, items: np.ndarray, cands: np.ndarray,
                user: UserRecord | None, keys: Mapping[int, CategoryRecord], after: tuple, recent: tuple,
                impression_ids: Sequence[int] | None) -> RequestRows:
    """:func:`build_rows` in count mode: short = the newest short_count, long = the long_count before
    them, hard = the long part's behaviors of the candidate category (the samples job's count branch)."""
    (a_ts, a_items, a_cats), (r_ts, r_items, r_cats) = after, recent
    nb = len(a_ts)
    n_all = min(spec.recent_n, nb + len(r_ts))
    all_ts = np.concatenate([a_ts, r_ts])[:n_all]
    all_items = np.concatenate([a_items, r_items])[:n_all]
    all_cats = np.concatenate([a_cats, r_cats])[:n_all]
    gaps = time_gap_bucket(t - all_ts, spec.time_gap_buckets, spec.time_gap_per_octave)
    n_short = min(spec.short_count, len(all_ts))
    long = slice(n_short, n_short + min(spec.long_count, len(all_ts) - n_short))
    shared = {"short_items": all_items[:n_short], "short_cats": all_cats[:n_short], "short_gaps": gaps[:n_short],
              "long_items": all_items[long], "long_cats": all_cats[long], "long_gaps": gaps[long]}
    long_len = (user.ubt_count if user else 0) + nb
    l_ts, l_items, l_cats = all_ts[long], all_items[long], all_cats[long]

    def hard_of_category(k: int, b_ts: np.ndarray, b_items: np.ndarray, rec: CategoryRecord | None):
        mine = l_cats == k
        return l_ts[mine][:spec.hard_k], l_items[mine][:spec.hard_k]

    return _assemble(spec, user_id, t, items, cands, keys, after, shared, n_short, long_len, hard_of_category,
                     impression_ids)


def _assemble(spec: RowSpec, user_id: int, t: int, items: np.ndarray, cands: np.ndarray,
              keys: Mapping[int, CategoryRecord], after: tuple, shared: dict, n_short: int, long_len: int,
              hard_of_category, impression_ids: Sequence[int] | None) -> RequestRows:
    """The rows from the request's shared sequences and each distinct category's hard sequence
    (``hard_of_category(k, day behaviors of k before t (ts, items), the key's record)`` -> (ts, items));
    ``d_category`` from the day's behaviors of the category, else the key's ``last_ts``."""
    a_ts, a_items, a_cats = after
    distinct, hard_of = np.unique(cands, return_inverse=True)
    hard, d_of_cat = [], np.empty(len(distinct), dtype=np.int64)
    for i, k in enumerate(distinct):
        mine = a_cats == k
        b_ts, b_items = a_ts[mine], a_items[mine]
        rec = keys.get(int(k))
        hard_ts, hard_items = hard_of_category(int(k), b_ts, b_items, rec)
        hard.append({"hard_items": hard_items, "hard_cats": np.full(len(hard_ts), k, dtype=np.int64),
                     "hard_gaps": time_gap_bucket(t - hard_ts, spec.time_gap_buckets, spec.time_gap_per_octave)})
        last = int(b_ts.max()) if len(b_ts) else (rec.last_ts if rec else None)
        d_of_cat[i] = -1 if last is None else (t - last) // SECONDS_PER_DAY
    n = len(items)
    scalars = {"impression_id": (np.arange(n, dtype=np.int64) if impression_ids is None
                                 else np.asarray(impression_ids, dtype=np.int64)),
               "user_id": np.full(n, int(user_id), dtype=np.int64), "item_id": items, "category_id": cands,
               "ts": np.full(n, t, dtype=np.int64), "label": np.zeros(n, dtype=np.int64),
               "short_len": np.full(n, n_short, dtype=np.int64),
               "hard_len": np.asarray([len(h["hard_items"]) for h in hard], dtype=np.int64)[hard_of],
               "long_len": np.full(n, long_len, dtype=np.int64), "d_category": d_of_cat[hard_of]}
    return RequestRows(scalars, shared, hard, np.asarray(hard_of, dtype=np.int64).reshape(-1))
