"""Petastorm behind one small module: readers over an explicit list of Parquet files or one row group of
one file, the row groups of a file list (from the footers), and the re-batching of what they read into
dense numpy batches (trimmed, optionally length-bucketed). Nothing else in the code imports petastorm.

The file list always comes from a Delta snapshot (:func:`sim.adapters.delta_io.snapshot_files`), never from a
directory listing, so files an overwrite removed are never read. Which rank reads which rows is decided
in one place, :class:`sim.training.loader.ShardedLoader`, from :func:`row_groups`.

Petastorm's batch reader reads each row group into a pyarrow table in its worker; its own results reader
then turns every column into numpy through pandas, which makes one Python ``bytes`` object per row of a
binary column. Our readers keep the table instead (:class:`_ArrowResults`, plugged into Petastorm's
reader): the samples' sequence columns, packed int32 ``binary`` values (:mod:`sim.formats.packing`),
become :class:`~sim.formats.packing.Ragged` views of their Arrow buffers, converted once per row group
and padded batch by batch, to the batch's longest row. Columns of the older padded-list layout (and plain numpy groups, as
the tests give) are still read as dense arrays.
"""
from __future__ import annotations

import dataclasses
import logging
import warnings
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from sim.adapters import storage

from sim.formats.packing import PACKED_COLUMNS, Ragged, dense_batch

log = logging.getLogger(__name__)

# Petastorm 0.12 calls pyarrow APIs that pyarrow 14 marks deprecated (the pin is deliberate, see
# constraints.txt); the warnings say nothing a user can act on.
warnings.filterwarnings("ignore", category=FutureWarning, module=r"petastorm(\.|$)")
warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"petastorm(\.|$)")


def file_urls(paths: Sequence[str]) -> list[str]:
    # Not Path.as_uri(): Petastorm does not decode URLs, and as_uri() would encode `dt=` as `dt%3D`.
    # S3 files are read through pyarrow's S3 file system (sim.adapters.storage.petastorm_filesystem).
    return [storage.petastorm_url(p) if "://" in p else "file://" + str(Path(p).resolve()) for p in paths]


@dataclasses.dataclass(frozen=True)
class RowGroup:
    """One row group of one Parquet file: the unit Petastorm reads."""
    path: str
    index: int    # position of the group in its file
    groups: int   # row groups in the file
    rows: int


def row_groups(files: Sequence[tuple[str, int]]) -> list[RowGroup]:
    """The row groups of ``files`` ((path, rows) pairs, as a snapshot lists them), in file order, from the
    Parquet footers. A file whose footer disagrees with the snapshot's row count fails here, before any
    rank has read (and counted on) a row of it."""
    out = []
    for path, rows in files:
        meta = storage.parquet_metadata(path)
        if meta.num_rows != rows:
            raise ValueError(f"{path} holds {meta.num_rows} rows but the snapshot lists {rows}; "
                             "was the file rewritten after the snapshot was resolved?")
        out.extend(RowGroup(path, i, meta.num_row_groups, meta.row_group(i).num_rows)
                   for i in range(meta.num_row_groups) if meta.row_group(i).num_rows)
    return out


class _ArrowResults:
    """What a Petastorm batch reader yields per row group with this results reader: the pyarrow table
    its worker read (Petastorm's own ``ArrowReaderWorkerResultsQueueReader`` converts it through pandas
    into a namedtuple of numpy columns). :func:`_arrays` takes either."""

    batched_output = True

    def read_next(self, workers_pool, schema, ngram):
        from petastorm.workers_pool import EmptyResultError
        try:
            return workers_pool.get_results()
        except EmptyResultError:
            raise StopIteration from None


def _batch_reader(urls: list[str], columns: Sequence[str], filesystem, **kwargs):
    """Petastorm's batch reader (one worker in this thread) yielding pyarrow tables (:class:`_ArrowResults`)."""
    from petastorm import make_batch_reader
    from petastorm.arrow_reader_worker import ArrowReaderWorkerResultsQueueReader

    reader = make_batch_reader(urls, schema_fields=list(columns), shuffle_row_groups=False,
                               reader_pool_type="dummy", workers_count=1, filesystem=filesystem, **kwargs)
    # The attribute Petastorm 0.12 reads results through (the pin, constraints.txt); fail loudly if a
    # later version moved it, rather than decode every row into Python objects again.
    if not isinstance(getattr(reader, "_results_queue_reader", None), ArrowReaderWorkerResultsQueueReader):
        reader.stop()
        reader.join()
        raise RuntimeError("this Petastorm version reads its batches differently; sim.adapters.petastorm_io "
                           "supports the pinned petastorm (constraints.txt)")
    reader._results_queue_reader = _ArrowResults()
    return reader


def open_reader(paths: Sequence[str], columns: Sequence[str], *, num_epochs: int | None = 1):
    """A Petastorm batch reader over all row groups of ``paths``, in the order given (sharding is
    :class:`sim.training.loader.ShardedLoader`'s, through :func:`read_row_group`); it yields one pyarrow
    table per row group, which :func:`iter_batches` takes."""
    if not paths:
        raise ValueError("no Parquet files to read (empty snapshot for the requested dates?)")
    return _batch_reader(file_urls(paths), columns, storage.petastorm_filesystem(paths[0]), num_epochs=num_epochs)


def read_row_group(group: RowGroup, columns: Sequence[str]) -> dict[str, np.ndarray]:
    """The dense columns of one row group, read by Petastorm (its row-group shard ``index`` of
    ``groups``, which is exactly that group). Fails unless it holds the rows the footer promised."""
    parts = []
    with _batch_reader(file_urls([group.path]), columns, storage.petastorm_filesystem(group.path), num_epochs=1,
                       cur_shard=group.index, shard_count=group.groups) as reader:
        for batch in reader:
            parts.append(_arrays(batch, columns))
    arrays = (parts[0] if len(parts) == 1 else
              {c: _concat([p[c] for p in parts]) for c in columns} if parts else {})
    got = len(arrays[columns[0]]) if arrays else 0
    if got != group.rows:
        raise RuntimeError(f"read {got} rows from row group {group.index} of {group.path}, expected "
                           f"{group.rows}")
    return arrays


def _dense(column: np.ndarray) -> np.ndarray:
    """A list column arrives as an object array of equal-length arrays; stack it into B X L."""
    if column.dtype == object:
        return np.stack(column) if len(column) else np.zeros((0, 0), dtype=np.int64)
    return column


def _column(name: str, column):
    """A column as the batches need it: a packed sequence column (``bytes`` per row) as a
    :class:`Ragged`, anything else dense."""
    if isinstance(column, Ragged):
        return column
    if name in PACKED_COLUMNS and column.dtype == object and (not len(column) or isinstance(column[0], bytes)):
        return Ragged.from_bytes(column, PACKED_COLUMNS[name], name)
    return _dense(column)


def _concat(parts: list):
    if not isinstance(parts[0], Ragged):
        return np.concatenate(parts)
    parts = [p.converted() for p in parts]
    offsets = np.cumsum([0] + [len(p.values) - 1 for p in parts[:-1]])  # each ends with its padding slot
    return Ragged(np.concatenate([p.values[:-1] for p in parts] + [np.zeros(1, parts[0].dtype)]),
                  np.concatenate([p.starts + o for p, o in zip(parts, offsets)]),
                  np.concatenate([p.lengths for p in parts]), parts[0].dtype)


def _check_aligned(arrays: dict) -> None:
    """The packed fields of one sequence hold as many elements per row (items, categories, gaps of the
    same behaviors): anything else is a broken table, caught before a model pairs the wrong values."""
    by_seq: dict[str, list[tuple[str, Ragged]]] = {}
    for c, a in arrays.items():
        if isinstance(a, Ragged):
            by_seq.setdefault(c.rsplit("_", 1)[0], []).append((c, a))
    for fields in by_seq.values():
        (c0, a0), *rest = fields
        for c, a in rest:
            if not np.array_equal(a.lengths, a0.lengths):
                raise ValueError(f"{c} and {c0} hold different numbers of elements in some rows")


def _real_lengths(arrays: dict[str, np.ndarray], sequences: Sequence[str]) -> np.ndarray:
    """Per row, the longest real length among ``sequences`` (padding is 0 and only at the end)."""
    lengths = [arrays[f"{s}_items"].lengths if isinstance(arrays[f"{s}_items"], Ragged)
               else np.count_nonzero(arrays[f"{s}_items"], axis=1) for s in sequences]
    return np.max(lengths, axis=0) if lengths else np.zeros(0, dtype=np.int64)


def _trim(batch: dict[str, np.ndarray], sequences: Sequence[str]) -> dict[str, np.ndarray]:
    """Cut each sequence's columns to the longest real length in the batch (at least 1 position): the
    padding every row shares carries nothing, and the models ignore trailing padding. (Packed columns
    come out of :func:`iter_batches` at that width already.)"""
    out = dict(batch)
    for s in sequences:
        if f"{s}_items" not in batch:
            continue
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


def _arrow_column(name: str, column):
    """A pyarrow column of a row group as the batches need it: a packed sequence as a :class:`Ragged`
    view of its buffers, a list column (the padded-list layout) stacked into B X L, the rest numpy."""
    import pyarrow as pa
    if isinstance(column, pa.ChunkedArray):  # one chunk per row group read: no copy then
        column = column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()
    if name in PACKED_COLUMNS and pa.types.is_binary(column.type):
        try:
            return Ragged.from_arrow(column, PACKED_COLUMNS[name])
        except ValueError as e:
            raise ValueError(f"{name}: {e}") from None
    if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
        lengths = np.asarray(column.value_lengths())
        if len(column) and (column.null_count or (lengths != lengths[0]).any()):
            raise ValueError(f"{name}: a list column must hold lists of one length (the padded layout)")
        width = int(lengths[0]) if len(column) else 0
        return column.flatten().to_numpy(zero_copy_only=False).reshape(len(column), width)
    return column.to_numpy(zero_copy_only=False)


def _arrays(group, columns: Sequence[str]) -> dict:
    """The columns of a row group (a dict, a pyarrow table from our Petastorm reader, or Petastorm's own
    namedtuple of numpy columns), packed sequences as :class:`Ragged`."""
    import pyarrow as pa
    if isinstance(group, pa.Table):
        arrays = {c: _arrow_column(c, group.column(c)) for c in columns}
        _check_aligned(arrays)
        return arrays
    get = group.__getitem__ if isinstance(group, dict) else lambda c: getattr(group, c)
    arrays = {c: _column(c, get(c)) for c in columns}
    _check_aligned(arrays)
    return arrays


def _own_rows(column):
    """``column``'s rows in arrays of their own: a :class:`Ragged` view keeps the elements of its whole
    row group alive (a fancy-indexed numpy column is a copy already)."""
    if not isinstance(column, Ragged):
        return column
    r = column.converted()
    starts = np.cumsum(r.lengths) - r.lengths
    total = int(r.lengths.sum())
    values = np.empty(total + 1, dtype=r.dtype)
    values[:-1] = r.values[np.repeat(r.starts - starts, r.lengths) + np.arange(total)]
    values[-1] = 0
    return Ragged(values, starts, r.lengths, r.dtype)


def iter_batches(groups: Iterable, columns: Sequence[str], batch_size: int, *,
                 sizes: Sequence[int] | None = None, shuffle_seed=None, trim: Sequence[str] = (),
                 bucket_batches: int = 0, shuffle_groups: int = 1) -> Iterator[dict[str, np.ndarray]]:
    """Re-batch row groups into dicts of dense numpy arrays of ``batch_size`` rows (the last one smaller).

    ``groups`` are a Petastorm reader's batches (one per row group) or dicts of arrays (packed sequence
    columns as :class:`Ragged`). A row group may hold tens of thousands of rows: each batch gathers its
    own rows from the groups (one copy per row, batch by batch), so a shuffled group is never copied whole.
    Packed sequence columns are padded to the batch's longest row (at least 1 position), whatever
    ``trim`` says.

    Args:
        sizes: the size of every batch instead (they must add up to the rows of ``groups``, so nothing is
            dropped and exactly ``len(sizes)`` batches come out).
        shuffle_seed: shuffle rows with this seed (deterministic order).
        trim: sequences (``short``, ``hard``, ``long``) whose columns are cut to the batch's longest real
            length, so a batch of short histories does not pay for the cap.
        bucket_batches: with shuffling, group rows of similar length (of the ``trim`` sequences) into
            batches, sorted within windows of this many batches, so trimming saves more; 0 = off.
        shuffle_groups: with shuffling, the rows of this many consecutive row groups are shuffled together
            (a shuffle buffer of row groups), so a batch mixes rows of all of them: a samples row group
            holds one date and one Spark partition of users. At most this many row groups are held,
            plus the rows (fewer than a batch) left of the previous ones, copied out of theirs.
            1 = one row group at a time. Without shuffling, row groups are read one at a time, in order.
    """
    rng = np.random.default_rng(shuffle_seed) if shuffle_seed is not None else None
    mix = max(1, int(shuffle_groups)) if rng is not None else 1
    # (the arrays of a window's row groups, then for each row still to take: its group, its row in it)
    pending: list[tuple[list[dict], np.ndarray, np.ndarray]] = []
    buffered = 0
    planned = iter(sizes) if sizes is not None else None
    want = next(planned, None) if planned is not None else batch_size

    def gather(window: list[dict], gid: np.ndarray, rows: np.ndarray) -> list[dict]:
        """The rows, one part per row group they come from (in the order of the groups)."""
        if len(window) == 1:
            return [{c: window[0][c][rows] for c in columns}]
        order = np.argsort(gid, kind="stable")
        gid, rows = gid[order], rows[order]
        cuts = np.flatnonzero(np.diff(gid)) + 1
        return [{c: window[g][c][r] for c in columns} for g, r in zip(gid[np.r_[0, cuts]], np.split(rows, cuts))]

    def take(n: int) -> dict[str, np.ndarray]:
        nonlocal buffered
        parts: list[dict[str, np.ndarray]] = []
        while n > 0:
            window, gid, rows = pending[0]
            k = min(n, len(rows))
            parts.extend(gather(window, gid[:k], rows[:k]))
            if k == len(rows):
                pending.pop(0)
            else:
                pending[0] = (window, gid[k:], rows[k:])
            n -= k
            buffered -= k
        batch, packed = {}, {}
        for c in columns:
            cols = [p[c] for p in parts]
            if isinstance(cols[0], Ragged):  # padded below, the fields of one sequence together
                packed.setdefault(c.rsplit("_", 1)[0], []).append(c)
            else:
                batch[c] = cols[0] if len(cols) == 1 else np.concatenate(cols)
        for names in packed.values():
            batch.update(zip(names, dense_batch([[p[c] for p in parts] for c in names])))
        batch = {c: batch[c] for c in columns}
        dense_trim = [s for s in trim if not isinstance(parts[0].get(f"{s}_items"), Ragged)]
        return _trim(batch, dense_trim) if dense_trim else batch

    def add(window: list[dict]) -> None:
        nonlocal buffered
        # What is left of the previous windows is copied out, so their row groups are freed.
        for i, (w, gid, rows) in enumerate(pending):
            parts = gather(w, gid, rows)
            left = {c: _concat([_own_rows(p[c]) for p in parts]) for c in columns}
            pending[i] = ([left], np.zeros(len(rows), dtype=np.int64), np.arange(len(rows)))
        counts = [len(a[columns[0]]) for a in window]
        gid = np.repeat(np.arange(len(window)), counts)
        rows = np.concatenate([np.arange(n) for n in counts])
        if rng is not None:
            idx = rng.permutation(len(rows))
            if bucket_batches and trim:
                lengths = np.concatenate([_real_lengths(a, trim) for a in window])
                idx = _bucketed(idx, lengths, batch_size, bucket_batches, rng)
            gid, rows = gid[idx], rows[idx]
        if len(rows):
            pending.append((window, gid, rows))
            buffered += len(rows)

    def ready() -> Iterator[dict[str, np.ndarray]]:
        nonlocal want
        while want is not None and buffered >= want:
            yield take(want)
            want = next(planned, None) if planned is not None else batch_size

    window: list[dict] = []
    for group in groups:
        window.append(_arrays(group, columns))
        if len(window) == mix:
            add(window)
            window = []
            yield from ready()
    if window:
        add(window)
        yield from ready()
    if planned is None:
        if buffered:
            yield take(buffered)
    elif buffered or want is not None:
        raise ValueError(f"planned batch sizes {list(sizes)} do not add up to the rows read")
