"""How the samples table stores a sequence, and how it is read back in numpy (no Spark, no pyspark import:
the training processes decode with this module alone). The Spark half and the table's schema are in
:mod:`sim.samples.contract`.

Format. Each sequence field (``short_items``, ``long_gaps``, ...) is one ``binary`` value per row holding
only the real elements, newest first, as big-endian int32: 4 bytes per element, no padding. The number of
elements is the value's length / 4 (so a row's stored long length, ``min(long_len, long_cap)``, needs no
column of its own and cannot disagree with the data). The fields of one sequence always have the same
number of elements.

Why. The former layout (lists padded to the cap, int64 ids) cost ~24 KB a row for ``long_items`` alone,
and Petastorm turns a list column into one numpy array per row before stacking them. A binary column
of a row group is two Arrow buffers (offsets, data): the loader views them in numpy (no copy,
:meth:`Ragged.from_arrow`; from Python ``bytes`` objects, :meth:`Ragged.from_bytes` joins them once),
converts the elements once per row group and pads rows per batch, to the batch's longest row, in
vectorized numpy (:class:`Ragged`). Big-endian because Spark's ``hex`` writes the most significant byte
first; the byte swap happens in that one conversion.

Limit. Ids and buckets must be in ``0 .. ID_MAX`` (2**31 - 1); the samples job fails with a clear error
naming the impression otherwise (:func:`sim.samples.transforms.to_samples`), it never truncates.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

ID_MAX = 2**31 - 1
PACKED = np.dtype(">i4")  # the stored element
ELEMENT_BYTES = PACKED.itemsize

SEQUENCES = ("short", "hard", "long")
SEQ_FIELDS = ("items", "cats", "gaps")
# What a batch holds for each field once padded: int32, the stored width (every value fits, ID_MAX). The
# models take int32 ids as they take int64 ones; int32 halves what padding a batch writes (against int64
# ids, bench/bench_loader.py measured the loader 1.7x faster on one thread).
FIELD_DTYPES = {"items": np.dtype(np.int32), "cats": np.dtype(np.int32), "gaps": np.dtype(np.int32)}


def seq_columns(name: str) -> tuple[str, str, str]:
    """Column names (items, cats, gaps) of one sequence of the samples table."""
    return tuple(f"{name}_{f}" for f in SEQ_FIELDS)  # type: ignore[return-value]


# Every packed column, and the dtype its padded batches have.
PACKED_COLUMNS = {c: FIELD_DTYPES[c.rsplit("_", 1)[1]] for s in SEQUENCES for c in seq_columns(s)}


def check_values(a: np.ndarray, what: str = "sequence values") -> None:
    """Fail unless every value of ``a`` is in ``0 .. ID_MAX``: what the stored int32 elements (and the
    int32 batches) hold; a wider value would wrap silently when narrowed."""
    if a.size and (a.min() < 0 or a.max() > ID_MAX):
        raise ValueError(f"{what} must be in 0..{ID_MAX} (int32, as the samples table stores them), got "
                         f"{int(a.min())}..{int(a.max())}")


def pack(values: Iterable[int]) -> bytes:
    """The stored bytes of one sequence field (tests and numpy writers; the samples job packs in Spark)."""
    a = np.asarray(list(values) if not isinstance(values, np.ndarray) else values, dtype=np.int64)
    check_values(a)
    return a.astype(PACKED).tobytes()


def unpack(value: bytes, dtype=np.int64) -> np.ndarray:
    """The elements of one stored value (a pandas cell, a row read with pyarrow)."""
    if len(value) % ELEMENT_BYTES:
        raise ValueError(f"a packed sequence has {len(value)} bytes, not a multiple of {ELEMENT_BYTES}")
    return np.frombuffer(value, dtype=PACKED).astype(dtype)


def unpack_series(values: Sequence[bytes], dtype=np.int64) -> list[np.ndarray]:
    """One array per row of a packed column (e.g. a pandas column of the samples table)."""
    return [unpack(v, dtype) for v in values]


def unpack_frame(frame, columns: Sequence[str] | None = None):
    """A copy of a pandas frame of samples rows with each stored sequence column (or ``columns``) as one
    array per row (int64 ids, int32 gap buckets), e.g. after ``DeltaTable(path).to_pandas()``."""
    out = frame.copy()
    for c in (columns if columns is not None else [c for c in frame.columns if c in PACKED_COLUMNS]):
        out[c] = unpack_series(frame[c].tolist(), PACKED_COLUMNS.get(c, np.dtype(np.int64)))
    return out


class Ragged:
    """Rows of one packed column: the flat elements (possibly shared with other views), each row's start
    in them and its length. Indexing by a slice or an index array gives another view of the same
    elements; :meth:`dense` pads rows into a ``B x width`` array of ``dtype``.

    ``values`` normally holds the elements already in ``dtype`` followed by one 0, the slot every padding
    position of a batch gathers from: a batch is then one ``np.take`` per field over an index computed
    once per sequence (the element conversion happens once per row group, in the reader's thread).
    ``from_arrow(..., convert=False)`` gives the stored big-endian values as they are (``padded`` false),
    converted only when a batch is asked for.
    """

    __slots__ = ("values", "starts", "lengths", "dtype", "padded")

    def __init__(self, values: np.ndarray, starts: np.ndarray, lengths: np.ndarray, dtype=np.int64,
                 padded: bool = True):
        self.values, self.starts, self.lengths = values, starts, lengths
        self.dtype, self.padded = np.dtype(dtype), padded

    @staticmethod
    def _with_pad_slot(stored: np.ndarray, dtype) -> np.ndarray:
        out = np.empty(len(stored) + 1, dtype=dtype)
        out[:-1] = stored
        out[-1] = 0
        return out

    @classmethod
    def from_stored(cls, stored: np.ndarray, lengths: np.ndarray, dtype=np.int64, convert: bool = True,
                    name: str = "sequence values"):
        """From the flat elements of every row and each row's length. Elements wider than ``dtype``
        (int64 lists a user sent) are range-checked first (``name`` in the error), never wrapped."""
        if stored.dtype.itemsize > np.dtype(dtype).itemsize:
            check_values(stored, name)
        starts = np.cumsum(lengths) - lengths
        if not convert:
            return cls(stored, starts, lengths, dtype, padded=False)
        return cls(cls._with_pad_slot(stored, dtype), starts, lengths, dtype)

    @classmethod
    def from_bytes(cls, objects: Sequence[bytes], dtype=np.int64, name: str = "column") -> "Ragged":
        """From one ``bytes`` object per row (a Petastorm batch's binary column): one join, no per-row
        arrays."""
        objects = objects.tolist() if isinstance(objects, np.ndarray) else list(objects)
        try:
            nbytes = np.fromiter(map(len, objects), dtype=np.int64, count=len(objects))
        except TypeError:
            raise ValueError(f"{name}: a row holds no packed sequence (null?)") from None
        if (nbytes % ELEMENT_BYTES).any():
            raise ValueError(f"{name}: a packed sequence's length is not a multiple of {ELEMENT_BYTES} bytes")
        return cls.from_stored(np.frombuffer(b"".join(objects), dtype=PACKED), nbytes // ELEMENT_BYTES, dtype)

    @classmethod
    def from_arrow(cls, array, dtype=np.int64, convert: bool = True) -> "Ragged":
        """From a pyarrow ``binary`` array, straight from its offset and data buffers (no Python objects;
        without ``convert``, no copy either)."""
        import pyarrow as pa
        if isinstance(array, pa.ChunkedArray):
            array = array.combine_chunks()
        if array.null_count:
            raise ValueError("a row holds no packed sequence (null)")
        _, offsets_buf, data_buf = array.buffers()
        wide = pa.types.is_large_binary(array.type)
        offsets = np.frombuffer(offsets_buf, dtype=np.int64 if wide else np.int32)
        offsets = offsets[array.offset:array.offset + len(array) + 1].astype(np.int64)
        lengths = np.diff(offsets)
        if (lengths % ELEMENT_BYTES).any():
            raise ValueError(f"a packed sequence's length is not a multiple of {ELEMENT_BYTES} bytes")
        base, end = int(offsets[0]), int(offsets[-1])
        data = (np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None
                else np.zeros(0, dtype=np.uint8))
        return cls.from_stored(data[base:end].view(PACKED), lengths // ELEMENT_BYTES, dtype, convert)

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, rows) -> "Ragged":
        return Ragged(self.values, self.starts[rows], self.lengths[rows], self.dtype, self.padded)

    @property
    def max_len(self) -> int:
        return int(self.lengths.max(initial=0))

    def converted(self) -> "Ragged":
        """This view over elements in ``dtype`` with the padding slot (itself when it has them)."""
        if self.padded:
            return self
        return Ragged(self._with_pad_slot(self.values, self.dtype), self.starts, self.lengths, self.dtype)

    def index(self, width: int) -> np.ndarray:
        """The ``len(self) x width`` positions in ``values`` a batch gathers: each row's elements, then
        the padding slot. The same for every field of one sequence, so computed once."""
        if self.max_len > width:
            raise ValueError(f"a row of {self.max_len} elements does not fit width {width}")
        pos = np.arange(width)
        index = self.starts[:, None] + pos
        index[pos >= self.lengths[:, None]] = len(self.values) - 1
        return index

    def dense(self, width: int | None = None, index: np.ndarray | None = None) -> np.ndarray:
        """The rows padded with 0 to ``width`` (default: the longest row, at least 1) as ``dtype``; rows
        longer than ``width`` fail (a batch is never cut). ``index``: :meth:`index` of this width, of
        this view or an aligned one (same starts, lengths and number of elements)."""
        r = self.converted()
        width = max(1, r.max_len) if width is None else int(width)
        return r.values.take(r.index(width) if index is None or r is not self else index)


def _aligned(a: Ragged, b: Ragged) -> bool:
    return (a.padded and b.padded and len(a.values) == len(b.values)
            and (a.starts is b.starts or np.array_equal(a.starts, b.starts))
            and (a.lengths is b.lengths or np.array_equal(a.lengths, b.lengths)))


def dense_batch(fields: Sequence[Sequence[Ragged]]) -> list[np.ndarray]:
    """The rows of each field of one sequence (each field: its views from one or more row groups, the
    same rows for every field) in one padded array per field, as wide as the longest row (at least 1).
    The gather index is computed once for the fields that share their layout."""
    fields = [[p.converted() for p in f] for f in fields]
    width = max(1, max(p.max_len for f in fields for p in f))
    indexes = [p.index(width) for p in fields[0]]
    out = []
    for parts in fields:
        dense = [p.dense(width, indexes[i] if _aligned(p, fields[0][i]) else None) for i, p in enumerate(parts)]
        out.append(dense[0] if len(dense) == 1 else np.concatenate(dense))
    return out
