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


# ------------------------------------------------------------------------------- sharding over the ranks
import math  # noqa: E402

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import pytest  # noqa: E402

from sim.training.loader import ShardedLoader, batch_sizes  # noqa: E402

# Uneven files, row groups of different sizes: 7 (one group), 150 (40, 40, 40, 30), 1003 (300 x 3, 103).
FILES = ((7, 7), (150, 40), (1003, 300))
ROWS = sum(n for n, _ in FILES)


@pytest.fixture(scope="module")
def uneven_files(tmp_path_factory) -> list[tuple[str, int]]:
    d = tmp_path_factory.mktemp("uneven")
    out, start = [], 0
    for i, (n, group_rows) in enumerate(FILES):
        g = groups(sizes=(n,), seed=i)[0]
        table = pa.table({"row": g.row + start, "long_items": list(g.long_items), "long_cats": list(g.long_cats),
                          "long_len": g.long_len})
        path = str(d / f"part-{i}.parquet")
        pq.write_table(table, path, row_group_size=group_rows)
        out.append((path, n))
        start += n
    assert [pq.ParquetFile(p).metadata.num_row_groups for p, _ in out] == [1, 4, 4]
    return out


def epoch_rows(files, size: int, batch: int, epoch: int, seed: int = 3, **kw) -> list[list[np.ndarray]]:
    """Per rank, the row ids of each batch of ``epoch``."""
    out = []
    for rank in range(size):
        loader = ShardedLoader(files, COLUMNS, rank=rank, size=size, batch_size=batch, seed=seed, **kw)
        out.append([b["row"] for b in loader.epoch(epoch)])
    return out


@pytest.mark.parametrize("size, batch", [(2, 58), (2, 64), (2, 1000), (3, 43), (3, 129), (3, 193), (3, 50)])
def test_every_rank_same_steps_and_every_row_once_per_epoch(uneven_files, size, batch):
    steps = math.ceil(math.ceil(ROWS / size) / batch)
    first = None
    for epoch in (0, 1):
        ranks = epoch_rows(uneven_files, size, batch, epoch, trim=("long",), bucket_batches=2)
        assert [len(r) for r in ranks] == [steps] * size  # the same number of optimizer steps
        assert all(0 < len(b) <= batch for r in ranks for b in r)
        shard_rows = [sum(len(b) for b in r) for r in ranks]
        assert max(shard_rows) - min(shard_rows) <= 1  # balanced by rows, not by files
        seen = np.concatenate([b for r in ranks for b in r])
        assert sorted(seen.tolist()) == list(range(ROWS))  # every row once: none twice, none dropped
        if first is None:
            first = seen
        else:
            assert seen.tolist() != first.tolist()  # another order in the next epoch
    again = epoch_rows(uneven_files, size, batch, 1, trim=("long",), bucket_batches=2)
    assert [[b.tolist() for b in r] for r in again] == [[b.tolist() for b in r] for r in ranks]
    other_seed = epoch_rows(uneven_files, size, batch, 1, seed=4, trim=("long",), bucket_batches=2)
    assert [[b.tolist() for b in r] for r in other_seed] != [[b.tolist() for b in r] for r in ranks]


# One file per date, as the samples job writes a date's partition, in row groups of 100 rows: a row group
# holds one date (and, in the real table, one Spark partition of users).
DATES, DATE_ROWS, GROUP_ROWS = 6, 300, 100
DATED_COLUMNS = ["row", "day", "long_items", "long_cats", "long_len"]


@pytest.fixture(scope="module")
def dated_files(tmp_path_factory) -> list[tuple[str, int]]:
    d = tmp_path_factory.mktemp("dated")
    out = []
    for day in range(DATES):
        g = groups(sizes=(DATE_ROWS,), seed=day)[0]
        table = pa.table({"row": g.row + day * DATE_ROWS, "day": np.full(DATE_ROWS, day),
                          "long_items": list(g.long_items), "long_cats": list(g.long_cats), "long_len": g.long_len})
        path = str(d / f"dt={day}.parquet")
        pq.write_table(table, path, row_group_size=GROUP_ROWS)
        out.append((path, DATE_ROWS))
    return out


@pytest.mark.parametrize("size", [1, 2])
def test_training_batches_mix_dates(dated_files, size):
    """The rows of several row groups of a rank's shard are shuffled together, so a batch mixes dates
    (shuffling inside one row group at a time gave batches of one date but at group borders: 1.3 dates
    per batch here); every row still once per epoch, the same order for the same seed and epoch."""
    def epoch(e: int, seed: int = 3) -> list[list[dict]]:
        return [list(ShardedLoader(dated_files, DATED_COLUMNS, rank=r, size=size, batch_size=32, seed=seed,
                                   trim=("long",), bucket_batches=2).epoch(e)) for r in range(size)]
    ranks = epoch(0)
    dates_per_batch = np.mean([len(np.unique(b["day"])) for r in ranks for b in r])
    assert dates_per_batch > 2.5, dates_per_batch
    rows = [b["row"].tolist() for r in ranks for b in r]
    assert sorted(sum(rows, [])) == list(range(DATES * DATE_ROWS))  # every row once
    assert len({len(r) for r in ranks}) == 1  # the same steps on every rank
    assert [b["row"].tolist() for r in epoch(0) for b in r] == rows
    assert [b["row"].tolist() for r in epoch(0, seed=4) for b in r] != rows
    assert [b["row"].tolist() for r in epoch(1) for b in r] != rows
    for r in ranks:
        for b in r:  # the row's columns stay together
            assert (b["day"] == b["row"] // DATE_ROWS).all()
            assert (np.count_nonzero(b["long_items"], axis=1) == b["long_len"]).all()


@pytest.mark.parametrize("size", [2, 3])
def test_a_table_of_few_row_groups_is_dealt_so_every_rank_mixes_them(dated_files, size):
    """The demo's layout: one row group per date, fewer than ``shuffle_groups`` per rank. Whole row
    groups per rank would give each rank one date; dealt row by row, every rank's batches mix the dates,
    each row still once per epoch over the ranks, shards as balanced as before."""
    files = [(p, n) for p, n in dated_files[:2]]
    single = []
    for path, n in files:  # one row group per file
        one = path.replace(".parquet", "-one.parquet")
        pq.write_table(pq.read_table(path), one, row_group_size=n)
        single.append((one, n))
    ranks = [list(ShardedLoader(single, DATED_COLUMNS, rank=r, size=size, batch_size=32, seed=3).epoch(0))
             for r in range(size)]
    assert all(len(np.unique(b["day"])) == 2 for r in ranks for b in r)
    assert sorted(np.concatenate([b["row"] for r in ranks for b in r]).tolist()) == list(range(2 * DATE_ROWS))
    assert len({len(r) for r in ranks}) == 1
    shard_rows = [sum(len(b["row"]) for b in r) for r in ranks]
    assert max(shard_rows) - min(shard_rows) <= 1


def test_mixed_row_groups_are_held_a_window_at_a_time():
    """The shuffle buffer reads ``shuffle_groups`` row groups before its first batch, never more: memory
    stays bounded by the window, whatever the shard's size."""
    g = groups(sizes=(100,) * 10)
    pulled = []

    def source():
        for x in g:
            pulled.append(x)
            yield x
    batches = iter_batches(source(), COLUMNS, 32, shuffle_seed=1, shuffle_groups=3)
    first = next(batches)
    assert len(pulled) == 3 and len(np.unique(first["row"] // 100)) == 3
    rows = np.concatenate([first["row"], *(b["row"] for b in batches)])
    assert sorted(rows.tolist()) == list(range(1000))
    unshuffled = np.concatenate([b["row"] for b in iter_batches(iter(g), COLUMNS, 32, shuffle_groups=3)])
    assert unshuffled.tolist() == list(range(1000))  # without shuffling, rows in order


def test_shards_change_between_epochs_but_the_batches_keep_their_rows_whole(uneven_files):
    loader = ShardedLoader(uneven_files, COLUMNS, rank=0, size=2, batch_size=64, seed=3, trim=("long",))
    a, b = (set(np.concatenate([x["row"] for x in loader.epoch(e)]).tolist()) for e in (0, 1))
    assert a != b  # the row groups are dealt out again each epoch
    for batch in loader.epoch(2):
        assert batch["long_items"].shape[1] == max(1, int(batch["long_len"].max()))
        assert (np.count_nonzero(batch["long_items"], axis=1) == batch["long_len"]).all()


@pytest.mark.parametrize("size", [1, 2, 3])
def test_evaluation_reads_every_row_once_in_file_order(uneven_files, size):
    ranks = epoch_rows(uneven_files, size, 100, 0, shuffle=False, same_steps=False)
    seen = np.concatenate([b for r in ranks for b in r])
    assert seen.tolist() == list(range(ROWS))


def test_more_ranks_than_rows(uneven_files):
    small = uneven_files[:1]  # 7 rows
    ranks = epoch_rows(small, 9, 4, 0, shuffle=False, same_steps=False)
    assert sorted(np.concatenate([b for r in ranks for b in r]).tolist()) == list(range(7))
    with pytest.raises(ValueError, match="cannot make 1 non-empty batches"):
        ShardedLoader(small, COLUMNS, rank=8, size=9, batch_size=4)  # training would hang a collective


def test_snapshot_row_counts_are_checked_against_the_files(uneven_files):
    path, rows = uneven_files[1]
    with pytest.raises(ValueError, match="holds 150 rows but the snapshot lists 151"):
        ShardedLoader([(path, rows + 1)], COLUMNS, batch_size=8)


def test_batch_sizes():
    assert batch_sizes(580, 10, 58) == [58] * 10
    assert batch_sizes(386, 3, 193) == [193, 97, 96]  # one row short of the longest shard: no empty batch
    assert batch_sizes(386, 3, 129) == [129, 129, 128]
    with pytest.raises(ValueError):
        batch_sizes(10, 2, 4)


@pytest.mark.slow
def test_horovod_ranks_take_equal_steps_over_uneven_files(uneven_files, tmp_path):
    """Three real ranks under horovodrun, one collective per batch: none waits for a batch that never
    comes, and the gathered rows are every row once per epoch, in another order the next epoch."""
    import json

    from conftest import hvd_script
    (tmp_path / "files.json").write_text(json.dumps(uneven_files))
    res = hvd_script(3, "hvd_loader.py", tmp_path / "out.json", str(tmp_path / "files.json"), "50")
    assert res["steps_per_epoch"] == math.ceil(math.ceil(ROWS / 3) / 50) == 8
    for e in res["epochs"]:
        assert e["steps"] == [8, 8, 8]
        assert sorted(e["rows"]) == list(range(ROWS))
    assert res["epochs"][0]["rows"] != res["epochs"][1]["rows"]
