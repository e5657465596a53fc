"""Petastorm behind one small module: a reader over an explicit list of Parquet files, sharded by rank,
turned into dense torch batches. Nothing else in the code imports petastorm.

The file list always comes from a Delta snapshot (:func:`sim.adapters.delta_io.snapshot_files`), never from a
directory listing, so files an overwrite removed are never read. Petastorm shards by row group; a rank
whose shard is smaller simply wraps around its shard (``num_epochs=None``) while the caller takes the same
number of steps on every rank, so no rank waits forever in a collective.
"""
from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pyarrow.parquet as pq

log = logging.getLogger(__name__)

# Petastorm 0.12 calls pyarrow APIs that pyarrow 14 marks deprecated (the pin is deliberate, see
# constraints.txt); the warnings say nothing a user can act on.
warnings.filterwarnings("ignore", category=FutureWarning, module=r"petastorm(\.|$)")
warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"petastorm(\.|$)")


def file_urls(paths: Sequence[str]) -> list[str]:
    # Not Path.as_uri(): Petastorm does not decode URLs, and as_uri() would encode `dt=` as `dt%3D`.
    return [p if "://" in p else "file://" + str(Path(p).resolve()) for p in paths]


def row_group_count(paths: Sequence[str]) -> int:
    return sum(pq.ParquetFile(p).metadata.num_row_groups for p in paths)


def open_reader(paths: Sequence[str], columns: Sequence[str], *, rank: int = 0, size: int = 1,
                num_epochs: int | None = 1, shuffle: bool = False, seed: int = 0):
    """A Petastorm batch reader over ``paths`` for the shard of ``rank`` out of ``size``.

    When there are fewer row groups than ranks, sharding by row group would leave a rank empty, so every
    rank then reads all row groups and :func:`iter_batches` keeps every ``size``-th row instead.
    """
    from petastorm import make_batch_reader

    if not paths:
        raise ValueError("no Parquet files to read (empty snapshot for the requested dates?)")
    shard = size > 1 and row_group_count(paths) >= size
    if shuffle:
        # Our own seeded file order, not Petastorm's shuffle_row_groups: Petastorm's order of row groups
        # after the first pass depends on the process's hash seed, so runs would not be reproducible
        # (and a resumed run would not continue like an uninterrupted one). Same seed on every rank:
        # the row-group shards stay disjoint.
        paths = [paths[i] for i in np.random.default_rng(seed).permutation(len(paths))]
    return make_batch_reader(
        file_urls(paths), schema_fields=list(columns), num_epochs=num_epochs,
        cur_shard=rank if shard else None, shard_count=size if shard else None,
        shuffle_row_groups=False, reader_pool_type="dummy", workers_count=1)


def rows_sharded_by_reader(paths: Sequence[str], size: int) -> bool:
    return size > 1 and row_group_count(paths) >= size


def _dense(column: np.ndarray) -> np.ndarray:
    """A list column arrives as an object array of equal-length arrays; stack it into B X L."""
    if column.dtype == object:
        return np.stack(column) if len(column) else np.zeros((0, 0), dtype=np.int64)
    return column


def _real_lengths(arrays: dict[str, np.ndarray], sequences: Sequence[str]) -> np.ndarray:
    """Per row, the longest real length among ``sequences`` (padding is 0 and only at the end)."""
    lengths = [np.count_nonzero(arrays[f"{s}_items"], axis=1) for s in sequences]
    return np.max(lengths, axis=0) if lengths else np.zeros(0, dtype=np.int64)


def _trim(batch: dict[str, np.ndarray], sequences: Sequence[str]) -> dict[str, np.ndarray]:
    """Cut each sequence's columns to the longest real length in the batch (at least 1 position): the
    padding every row shares carries nothing, and the models ignore trailing padding."""
    out = dict(batch)
    for s in sequences:
        width = max(1, int(np.count_nonzero(batch[f"{s}_items"], axis=1).max(initial=0)))
        for c in batch:
            if c.startswith(f"{s}_") and batch[c].ndim == 2:
                out[c] = batch[c][:, :width]
    return out


def _bucketed(idx: np.ndarray, lengths: np.ndarray, batch_size: int, window_batches: int,
              rng: np.random.Generator) -> np.ndarray:
    """Reorder shuffled row indices so each batch holds rows of similar length: within windows of
    ``window_batches`` batches, sort by length, then shuffle the order of the batches (seeded)."""
    out = []
    window = batch_size * window_batches
    for start in range(0, len(idx), window):
        part = idx[start:start + window]
        part = part[np.argsort(lengths[part], kind="stable")]
        batches = [part[i:i + batch_size] for i in range(0, len(part), batch_size)]
        out.extend(batches[i] for i in rng.permutation(len(batches)))
    return np.concatenate(out) if out else idx


def iter_batches(reader, columns: Sequence[str], batch_size: int, *, rank: int = 0, size: int = 1,
                 stride_rows: bool = False, shuffle_seed: int | None = None, drop_last: bool = False,
                 trim: Sequence[str] = (), bucket_batches: int = 0) -> Iterator[dict[str, np.ndarray]]:
    """Re-batch Petastorm's row-group batches into dicts of dense numpy arrays of ``batch_size`` rows.

    A row group may hold tens of thousands of rows: each batch gathers its own rows from the group (one
    copy per row, batch by batch), so a shuffled group is never copied whole.

    Args:
        stride_rows: keep rows ``rank::size`` of each row group (see :func:`open_reader`).
        shuffle_seed: shuffle rows inside each row group with this seed (deterministic order).
        trim: sequences (``short``, ``hard``, ``long``) whose columns are cut to the batch's longest real
            length, so a batch of short histories does not pay for the cap.
        bucket_batches: with shuffling, group rows of similar length (of the ``trim`` sequences) into
            batches, sorted within windows of this many batches, so trimming saves more; 0 = off.
    """
    rng = np.random.default_rng(shuffle_seed) if shuffle_seed is not None else None
    pending: list[tuple[dict[str, np.ndarray], np.ndarray]] = []  # (a row group's arrays, rows to take)
    buffered = 0

    def take(n: int) -> dict[str, np.ndarray]:
        nonlocal buffered
        parts: list[dict[str, np.ndarray]] = []
        while n > 0:
            arrays, idx = pending[0]
            k = min(n, len(idx))
            parts.append({c: arrays[c][idx[:k]] for c in columns})
            if k == len(idx):
                pending.pop(0)
            else:
                pending[0] = (arrays, idx[k:])
            n -= k
            buffered -= k
        batch = parts[0] if len(parts) == 1 else {c: np.concatenate([p[c] for p in parts]) for c in columns}
        return _trim(batch, trim) if trim else batch

    for group in reader:
        arrays = {c: _dense(getattr(group, c)) for c in columns}
        idx = np.arange(len(arrays[columns[0]]))
        if stride_rows:
            idx = idx[rank::size]
        if rng is not None:
            idx = rng.permutation(idx)
            if bucket_batches and trim:
                idx = _bucketed(idx, _real_lengths(arrays, trim), batch_size, bucket_batches, rng)
        if len(idx):
            pending.append((arrays, idx))
            buffered += len(idx)
        while buffered >= batch_size:
            yield take(batch_size)
    if buffered and not drop_last:
        yield take(buffered)
