"""The packed sequence format (sim.formats.packing) and the loader over it: int32 values of the real
elements only, decoded from the Arrow tables Petastorm's batch reader reads (no per-row objects), padded per batch to the batch's
longest row; every row once, in the same order whatever the number of reader threads."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sim.adapters.petastorm_io import _concat, iter_batches, read_row_group, row_groups
from sim.formats.packing import ID_MAX, PACKED_COLUMNS, Ragged, pack, unpack, unpack_series
from sim.training.loader import ShardedLoader


def test_pack_roundtrip_and_limits():
    for values in ([], [1], [7, 0, ID_MAX, 3]):
        b = pack(values)
        assert len(b) == 4 * len(values)
        assert unpack(b).tolist() == values and unpack(b).dtype == np.int64
    assert pack([1, 258]) == bytes([0, 0, 0, 1, 0, 0, 1, 2])  # big-endian, as Spark's hex writes it
    for bad in ([ID_MAX + 1], [-1]):
        with pytest.raises(ValueError, match="must be in 0..2147483647"):
            pack(bad)
    with pytest.raises(ValueError, match="not a multiple of 4"):
        unpack(b"\x00\x01")
    assert [a.tolist() for a in unpack_series([pack([3, 4]), b""], np.int32)] == [[3, 4], []]


def _rows(n: int, seed: int, cap: int = 30) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(1, 1000, rng.integers(0, cap + 1)).tolist() for _ in range(n)]


def _padded(rows: list[list[int]]) -> np.ndarray:
    width = max(1, max(map(len, rows)))
    return np.array([r + [0] * (width - len(r)) for r in rows], dtype=np.int64)


def test_ragged_from_bytes_and_from_arrow_pad_like_the_lists():
    rows = _rows(50, 0)
    objects = np.array([pack(r) for r in rows], dtype=object)
    a = Ragged.from_bytes(objects)
    b = Ragged.from_arrow(pa.array(list(objects), pa.binary()).slice(0))
    c = Ragged.from_arrow(pa.chunked_array([pa.array(list(objects[:20])), pa.array(list(objects[20:]))]))
    for r in (a, b, c):
        assert len(r) == 50 and r.lengths.tolist() == [len(x) for x in rows]
        assert np.array_equal(r.dense(), _padded(rows))
    sliced = Ragged.from_arrow(pa.array(list(objects), pa.binary()).slice(7, 9))
    assert np.array_equal(sliced.dense(), _padded(rows[7:16]))
    raw = Ragged.from_arrow(pa.array(list(objects), pa.binary()), convert=False)  # a view, converted lazily
    assert not raw.padded and np.array_equal(raw[idx := np.array([4, 1])].dense(), _padded([rows[4], rows[1]]))
    joined = _concat([a[:30], Ragged.from_bytes(objects[30:]), raw[np.arange(50)]])  # a group read in parts
    assert np.array_equal(joined.dense(), _padded(rows + rows))
    idx = np.array([5, 3, 40, 3])
    assert np.array_equal(a[idx].dense(), _padded([rows[i] for i in idx]))
    assert np.array_equal(a[10:12].dense(40)[:, :max(1, len(rows[10]), len(rows[11]))],
                          _padded(rows[10:12]))
    assert a[np.array([], dtype=int)].dense().shape == (0, 1)
    assert Ragged.from_bytes([b"", b""], np.int32).dense().tolist() == [[0], [0]]  # at least 1 position
    with pytest.raises(ValueError, match="does not fit width"):
        a.dense(1)
    with pytest.raises(ValueError, match="null"):
        Ragged.from_bytes([pack([1]), None], name="long_items")


COLUMNS = ["row", "long_items", "long_cats", "long_gaps", "long_len"]


def _write(path, start: int, n: int, group_rows: int, seed: int) -> tuple[list[list[int]], tuple[str, int]]:
    rows = _rows(n, seed)
    table = pa.table({"row": np.arange(start, start + n), "long_items": [pack(r) for r in rows],
                      "long_cats": [pack([x % 7 + 1 for x in r]) for r in rows],
                      "long_gaps": [pack([x % 5 + 1 for x in r]) for r in rows],
                      "long_len": np.array([len(r) + 3 for r in rows], dtype=np.int32)})  # uncapped
    pq.write_table(table, str(path), row_group_size=group_rows)
    return rows, (str(path), n)


@pytest.fixture(scope="module")
def packed_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("packed")
    rows, files, start = [], [], 0
    for i, (n, group_rows) in enumerate(((9, 9), (140, 40), (301, 100))):
        r, f = _write(d / f"part-{i}.parquet", start, n, group_rows, seed=i)
        rows += r
        files.append(f)
        start += n
    return rows, files


def test_read_row_group_decodes_packed_columns(packed_files):
    rows, files = packed_files
    g = row_groups(files)[2]  # rows 9+40 .. 9+80 of the second file
    arrays = read_row_group(g, COLUMNS)
    assert isinstance(arrays["long_items"], Ragged) and arrays["long_items"].dtype == np.int32
    assert arrays["long_gaps"].dtype == np.int32
    want = rows[49:89]
    assert arrays["row"].tolist() == list(range(49, 89))
    assert np.array_equal(arrays["long_items"].dense(), _padded(want))


def test_petastorm_reader_hands_over_arrow_tables_not_python_objects(packed_files, tmp_path):
    """Petastorm's batch reader yields the row group's pyarrow table (no pandas, no bytes object per
    row); a packed column becomes a Ragged view of its buffers, a padded-list column a B X L array, and
    a list column of unequal lengths (not the padded layout) or a null packed value is refused."""
    from sim.adapters.petastorm_io import open_reader
    rows, files = packed_files
    with open_reader([files[1][0]], COLUMNS) as reader:
        groups = list(reader)
    assert [type(g) for g in groups] == [pa.Table] * 4 and sum(g.num_rows for g in groups) == 140
    batches = list(iter_batches(iter(groups), COLUMNS, 140))
    assert len(batches) == 1 and np.array_equal(batches[0]["long_items"], _padded(rows[9:149]))
    lists, ragged_lists, nulls = tmp_path / "lists.parquet", tmp_path / "ragged.parquet", tmp_path / "nulls.parquet"
    pq.write_table(pa.table({"long_items": pa.array([[1, 2, 0], [3, 0, 0]], pa.list_(pa.int64()))}), lists)
    pq.write_table(pa.table({"long_items": pa.array([[1, 2], [3]], pa.list_(pa.int64()))}), ragged_lists)
    pq.write_table(pa.table({"long_items": pa.array([pack([1]), None], pa.binary())}), nulls)
    assert read_row_group(row_groups([(str(lists), 2)])[0], ["long_items"])["long_items"].tolist() == [[1, 2, 0], [3, 0, 0]]
    with pytest.raises(ValueError, match="long_items: a list column must hold lists of one length"):
        read_row_group(row_groups([(str(ragged_lists), 2)])[0], ["long_items"])
    with pytest.raises(ValueError, match="long_items: a row holds no packed sequence"):
        read_row_group(row_groups([(str(nulls), 2)])[0], ["long_items"])


@pytest.mark.parametrize("size, batch", [(1, 64), (2, 50), (3, 33)])
def test_loader_over_packed_files(packed_files, size, batch):
    rows, files = packed_files

    def run(workers: int, epoch: int):
        out = []
        for rank in range(size):
            loader = ShardedLoader(files, COLUMNS, rank=rank, size=size, batch_size=batch, seed=3,
                                   trim=("long",), bucket_batches=2, workers=workers)
            out.append(list(loader.epoch(epoch)))
        return out

    ranks = run(1, 0)
    seen = []
    for batches in ranks:
        for b in batches:
            ids = b["row"]
            want = _padded([rows[i] for i in ids])
            assert np.array_equal(b["long_items"], want)  # padded to the batch's longest row
            assert b["long_items"].dtype == np.int32 and b["long_gaps"].dtype == np.int32
            assert np.array_equal(b["long_cats"], np.where(want > 0, want % 7 + 1, 0))
            assert b["long_gaps"].shape == want.shape
            seen += ids.tolist()
    assert sorted(seen) == list(range(len(rows)))
    assert len({len(r) for r in ranks}) == 1  # the same steps on every rank
    for workers in (2, 4):  # read-ahead threads change nothing
        other = run(workers, 0)
        assert [[b["row"].tolist() for b in r] for r in other] == [[b["row"].tolist() for b in r] for r in ranks]
    assert [[b["row"].tolist() for b in r] for r in run(3, 1)] != [[b["row"].tolist() for b in r] for r in ranks]


def test_misaligned_fields_are_refused():
    group = {"row": np.arange(2), "long_items": Ragged.from_bytes([pack([1, 2]), pack([3])]),
             "long_cats": Ragged.from_bytes([pack([1]), pack([3, 4])])}
    with pytest.raises(ValueError, match="different numbers of elements"):
        list(iter_batches([group], ["row", "long_items", "long_cats"], 2))


def test_packed_files_give_the_batches_the_padded_lists_gave(tmp_path):
    """The same rows written in the former layout (int64 lists padded to the caps) and packed: the loader
    yields the same batches from both, value for value, dtype for dtype, width for width."""
    rng = np.random.default_rng(4)
    n, caps = 700, {"short": 6, "hard": 4, "long": 40}
    columns = ["row", "label", "long_len"]
    old = {"row": np.arange(n), "label": rng.integers(0, 2, n).astype(np.int32)}
    new = dict(old)
    lengths = {s: rng.integers(0, cap + 1, n) for s, cap in caps.items()}
    old["long_len"] = new["long_len"] = (lengths["long"] + rng.integers(0, 3, n)).astype(np.int32)
    for s, cap in caps.items():
        for field, high in (("items", 10**6), ("cats", 300), ("gaps", 64)):
            c = f"{s}_{field}"
            rows = [rng.integers(1, high, k).tolist() for k in lengths[s]]
            dtype = np.int32 if field == "gaps" else np.int64
            old[c] = pa.array([r + [0] * (cap - len(r)) for r in rows], pa.list_(pa.from_numpy_dtype(dtype)))
            new[c] = pa.array([pack(r) for r in rows], pa.binary())
            columns.append(c)
    files = []
    for name, table in (("padded", old), ("packed", new)):
        pq.write_table(pa.table(table), str(tmp_path / f"{name}.parquet"), row_group_size=300)
        files.append([(str(tmp_path / f"{name}.parquet"), n)])
    for kw in ({"trim": ("short", "hard", "long"), "bucket_batches": 3}, {"shuffle": False, "same_steps": False}):
        a, b = (list(ShardedLoader(f, columns, rank=1, size=2, batch_size=64, seed=2, **kw).epoch(1)) for f in files)
        assert len(a) == len(b) > 1
        for x, y in zip(a, b):
            for c in columns:
                # the padded lists keep their int64 ids; the packed ones come as int32
                assert y[c].dtype == PACKED_COLUMNS.get(c, x[c].dtype), (kw, c)
                if "trim" in kw or c not in PACKED_COLUMNS:
                    assert np.array_equal(x[c], y[c]), (kw, c)
                else:  # untrimmed padded lists keep the cap; packed columns come at the batch's width
                    width = y[c].shape[1]
                    assert np.array_equal(x[c][:, :width], y[c]) and not x[c][:, width:].any(), c
