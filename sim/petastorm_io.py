"""Petastorm behind one small module: a reader over an explicit list of Parquet files, sharded by rank,
turned into dense torch batches. Nothing else in the code imports petastorm.

The file list always comes from a Delta snapshot (:func:`sim.delta_io.snapshot_files`), never from a
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


def iter_batches(reader, columns: Sequence[str], batch_size: int, *, rank: int = 0, size: int = 1,
                 stride_rows: bool = False, shuffle_seed: int | None = None,
                 drop_last: bool = False) -> Iterator[dict[str, np.ndarray]]:
    """Re-batch Petastorm's row-group batches into dicts of dense numpy arrays of ``batch_size`` rows.

    A row group may hold tens of thousands of rows: batches are cut from it as views, so each row is
    copied once (by the stride/shuffle selection), not once per batch taken from its group.

    Args:
        stride_rows: keep rows ``rank::size`` of each row group (see :func:`open_reader`).
        shuffle_seed: shuffle rows inside each row group with this seed (deterministic order).
    """
    rng = np.random.default_rng(shuffle_seed) if shuffle_seed is not None else None
    pending: list[dict[str, np.ndarray]] = []
    buffered = 0

    def take(n: int) -> dict[str, np.ndarray]:
        nonlocal buffered
        parts: list[dict[str, np.ndarray]] = []
        while n > 0:
            chunk = pending[0]
            rows = len(chunk[columns[0]])
            if rows <= n:
                parts.append(pending.pop(0))
                n -= rows
                buffered -= rows
            else:
                parts.append({c: chunk[c][:n] for c in columns})
                pending[0] = {c: chunk[c][n:] for c in columns}
                buffered -= n
                n = 0
        if len(parts) == 1:
            return parts[0]
        return {c: np.concatenate([p[c] for p in parts]) for c in columns}

    for group in reader:
        arrays = {c: _dense(getattr(group, c)) for c in columns}
        n = len(arrays[columns[0]])
        if stride_rows or rng is not None:
            idx = np.arange(n)
            if stride_rows:
                idx = idx[rank::size]
            if rng is not None:
                idx = rng.permutation(idx)
            arrays = {c: arrays[c][idx] for c in columns}
        if len(arrays[columns[0]]):
            pending.append(arrays)
            buffered += len(arrays[columns[0]])
        while buffered >= batch_size:
            yield take(batch_size)
    if buffered and not drop_last:
        yield take(buffered)
