"""Which rows each Horovod rank reads, in which order, in how many batches: one object, :class:`ShardedLoader`,
so training and evaluation never recompute it.

Sharding is by rows, not by whole files or row groups, so shards are balanced whatever the files' sizes:
the row groups (from the Parquet footers) are laid end to end, in an order drawn from ``seed`` and the
epoch when shuffling, and rank ``r`` takes the next ``rows // size`` rows (one more for the first
``rows % size`` ranks). A row group on the border of two shards is read by both ranks, each keeping its
own row range. A table with fewer than ``shuffle_groups`` row groups per rank when shuffling (the demo
writes one row group per date) is dealt out row by row instead: rank ``r`` takes every ``size``-th row
of the groups laid end to end, from row ``r`` (the same number of rows), so every rank reads every row
group and its batches mix them as the shuffle below means to, for ``size`` times the reading of a small
table. Either way every row is read by exactly one rank, once per epoch.

For training every rank takes the same number of optimizer steps (each is a collective):
``ceil(ceil(rows / size) / batch_size)``; a rank's batches are full but for the last one or two, which
are smaller, never empty, never repeating a row. Within a rank, the rows of ``shuffle_groups``
consecutive row groups of its shard are shuffled together (seeded by seed, epoch and rank), so a batch
mixes rows of several row groups: a samples row group holds one date and one Spark partition (one hash
bucket of users), and shuffling inside one group alone gave batches of one day and one bucket. An
epoch's order depends only on seed, epoch, rank and ``shuffle_groups``: a resumed run reads epoch ``e``
exactly as an uninterrupted one would. A rank holds at most ``shuffle_groups`` row groups being batched,
plus the ``workers`` read ahead.

With ``workers`` > 1 the next row groups of the shard are read ahead by a pool of threads, each with
its own single-group Petastorm reader (Parquet decoding releases the GIL); their results are taken in
the shard's order, so the batches are the same whatever the number of workers. (Petastorm's own thread
pool hands row groups over in the order they finish, which would make the order depend on timing.)
"""
from __future__ import annotations

import collections
import dataclasses
import math
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator, Sequence

import numpy as np

from sim.adapters import petastorm_io
from sim.adapters.petastorm_io import RowGroup

# Row groups whose rows one shuffle mixes (train.shuffle_groups): a batch draws on up to four dates or
# partitions of users, for the memory of four row groups (Spark writes them up to 128 MB).
SHUFFLE_GROUPS = 4


@dataclasses.dataclass(frozen=True)
class Piece:
    """Rows ``start:stop:step`` of one row group, as one rank reads them."""
    group: RowGroup
    start: int
    stop: int
    step: int = 1


def shard_bounds(rows: int, rank: int, size: int) -> tuple[int, int]:
    """The rows ``[first, last)`` of ``rank``: ``rows // size`` each, one more for the first ranks."""
    base, extra = divmod(rows, size)
    first = rank * base + min(rank, extra)
    return first, first + base + (rank < extra)


def shard(groups: Sequence[RowGroup], rank: int, size: int) -> list[Piece]:
    """The pieces of ``groups`` (laid end to end in this order) that make up the shard of ``rank``."""
    first, last = shard_bounds(sum(g.rows for g in groups), rank, size)
    pieces, offset = [], 0
    for g in groups:
        lo, hi = max(first, offset), min(last, offset + g.rows)
        if lo < hi:
            pieces.append(Piece(g, lo - offset, hi - offset))
        offset += g.rows
    return pieces


def deal(groups: Sequence[RowGroup], rank: int, size: int) -> list[Piece]:
    """The pieces of ``groups`` (laid end to end in this order) that hold every ``size``-th row from row
    ``rank``: as many rows as :func:`shard` gives ``rank``, from every group that has one."""
    pieces, offset = [], 0
    for g in groups:
        start = (rank - offset) % size
        if start < g.rows:
            pieces.append(Piece(g, start, g.rows, size))
        offset += g.rows
    return pieces


def batch_sizes(rows: int, steps: int, batch_size: int) -> list[int]:
    """``rows`` in exactly ``steps`` non-empty batches of at most ``batch_size``: full batches, then the
    rest; while that makes too few batches, the last of the largest is split in two."""
    if not steps <= rows <= steps * batch_size:
        raise ValueError(f"{rows} rows cannot make {steps} non-empty batches of at most {batch_size} rows")
    sizes = [batch_size] * (rows // batch_size) + ([rows % batch_size] if rows % batch_size else [])
    while len(sizes) < steps:
        i = len(sizes) - 1 - int(np.argmax(sizes[::-1]))
        sizes[i:i + 1] = [(sizes[i] + 1) // 2, sizes[i] // 2]
    return sizes


class ShardedLoader:
    """Batches of one rank's shard of a snapshot's files, the same number of them on every rank.

    Args:
        files: (path, rows) of the snapshot's files (:attr:`DataManifest.files` of a split).
        columns: the columns to read.
        rank, size: this rank and the number of ranks.
        batch_size: rows per batch (the last one or two of a rank's epoch are smaller).
        seed: with ``shuffle``, draws the row-group order of each epoch (the same on every rank, so the
            shards stay disjoint) and the row order within each window of ``shuffle_groups`` row groups.
        shuffle: without it (evaluation) the files are read in the order given and rows in file order.
        shuffle_groups: with ``shuffle``, how many consecutive row groups of the shard are shuffled
            together (and held in memory at once); 1 = each row group alone.
        same_steps: every rank yields :attr:`steps_per_epoch` batches (training); without it a rank yields
            as many batches as its shard needs, possibly none (evaluation).
        trim, bucket_batches: see :func:`sim.adapters.petastorm_io.iter_batches`.
        workers: row groups read at once, ahead of the batches (1 = one after the other, in this
            thread); the batches do not depend on it.
    """

    def __init__(self, files: Sequence[tuple[str, int]], columns: Sequence[str], *, rank: int = 0,
                 size: int = 1, batch_size: int, seed: int = 0, shuffle: bool = True,
                 same_steps: bool = True, trim: Sequence[str] = (), bucket_batches: int = 0,
                 workers: int = 1, shuffle_groups: int = SHUFFLE_GROUPS):
        if not files:
            raise ValueError("no Parquet files to read (empty snapshot for the requested dates?)")
        if not 0 <= rank < size or batch_size < 1:
            raise ValueError(f"bad rank {rank} of {size} or batch size {batch_size}")
        if shuffle_groups < 1:
            raise ValueError(f"shuffle_groups must be at least 1, got {shuffle_groups}")
        self.groups = petastorm_io.row_groups(files)
        self.columns = list(columns)
        self.rank, self.size, self.batch_size, self.seed = rank, size, batch_size, int(seed)
        self.shuffle, self.same_steps = shuffle, same_steps
        self.trim, self.bucket_batches = tuple(trim), int(bucket_batches)
        self.workers = max(1, int(workers))
        self.shuffle_groups = int(shuffle_groups)
        # Too few row groups for every rank's shard to fill a shuffle window with whole ones: deal rows.
        self.dealt = shuffle and size > 1 and len(self.groups) < self.shuffle_groups * size
        self.rows = sum(g.rows for g in self.groups)
        first, last = shard_bounds(self.rows, rank, size)
        self.shard_rows = last - first
        if same_steps:
            self.steps_per_epoch = math.ceil(math.ceil(self.rows / size) / batch_size)
            self._sizes = batch_sizes(self.shard_rows, self.steps_per_epoch, batch_size)  # fails early
        else:
            self.steps_per_epoch = math.ceil(self.shard_rows / batch_size)

    def order(self, epoch: int) -> list[RowGroup]:
        """The row groups laid end to end in ``epoch`` (the same on every rank)."""
        if not self.shuffle:
            return list(self.groups)
        perm = np.random.default_rng([self.seed, epoch]).permutation(len(self.groups))
        return [self.groups[i] for i in perm]

    def pieces(self, epoch: int) -> list[Piece]:
        """What this rank reads in ``epoch``."""
        return (deal if self.dealt else shard)(self.order(epoch), self.rank, self.size)

    def epoch(self, epoch: int = 0) -> Iterator[dict[str, np.ndarray]]:
        """The batches of this rank in ``epoch``: every row of its shard once, ``steps_per_epoch``
        batches with ``same_steps``, in an order that depends only on seed, epoch and rank."""
        yield from petastorm_io.iter_batches(
            self._parts(self.pieces(epoch)), self.columns, self.batch_size, sizes=self._sizes if self.same_steps else None,
            shuffle_seed=[self.seed, epoch, self.rank] if self.shuffle else None, trim=self.trim,
            bucket_batches=self.bucket_batches, shuffle_groups=self.shuffle_groups)

    def _read(self, p: Piece) -> dict:
        arrays = petastorm_io.read_row_group(p.group, self.columns)
        return {c: a[p.start:p.stop:p.step] for c, a in arrays.items()}

    def _parts(self, pieces: list[Piece]) -> Iterator[dict]:
        """The rows of ``pieces`` in order, ``workers`` row groups read ahead."""
        if self.workers == 1:
            yield from map(self._read, pieces)
            return
        with ThreadPoolExecutor(self.workers, thread_name_prefix="sim-loader") as pool:
            ahead = iter(pieces)
            pending = collections.deque(pool.submit(self._read, p) for _, p in zip(range(self.workers), ahead))
            try:
                while pending:
                    done = pending.popleft().result()
                    nxt = next(ahead, None)
                    if nxt is not None:
                        pending.append(pool.submit(self._read, nxt))
                    yield done
            finally:
                for f in pending:
                    f.cancel()
