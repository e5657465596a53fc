"""The gradient-boosting reference row: its features on a hand-made samples table, its point-in-time item
popularity, and that it reads exactly the rows a training run reads, per split."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from helpers.samples_table import write_samples
from sim.adapters import delta_io
from sim.formats.packing import pack
from sim.training import reference
from sim.training.experiment import resolve_data
from test_ubt import beh, write_logs

DAY = 86400
T0 = 1_719_792_000  # 2024-07-01 00:00 UTC


def _table(rows: list[dict]) -> pa.Table:
    """Samples rows as the table stores them (sequences packed, newest first)."""
    cols = {c: [r[c] for r in rows] for c in rows[0]}
    return pa.table({c: pa.array([pack(x) for x in v], pa.binary()) if isinstance(v[0], list) else pa.array(v)
                     for c, v in cols.items()})


def test_row_features_on_a_hand_made_table():
    # Row 0: candidate item 7 of category 3. Short: items 7(c3) 8(c3) 7(c3) 9(c5); long (newest first):
    # 5(c1) 7(c3) 6(c3) 7(c3). Row 1: item 2 of category 4, nothing in the short sequence, long 1(c1) 3(c2).
    rows = [
        {"impression_id": 1, "item_id": 7, "category_id": 3, "label": 1, "short_len": 4, "hard_len": 3,
         "long_len": 40, "d_category": 2,
         "short_items": [7, 8, 7, 9], "short_cats": [3, 3, 3, 5],
         "long_items": [5, 7, 6, 7], "long_cats": [1, 3, 3, 3]},
        {"impression_id": 2, "item_id": 2, "category_id": 4, "label": 0, "short_len": 0, "hard_len": 0,
         "long_len": 2, "d_category": -1,
         "short_items": [], "short_cats": [], "long_items": [1, 3], "long_cats": [1, 2]},
        {"impression_id": 3, "item_id": 4, "category_id": 4, "label": 0, "short_len": 1, "hard_len": 0,
         "long_len": 0, "d_category": -1, "short_items": [4], "short_cats": [4], "long_items": [],
         "long_cats": []},
    ]
    x = reference.row_features(_table(rows), popularity=np.array([11.0, 0.0, 5.0]))
    got = [dict(zip(reference.FEATURES, r)) for r in x]
    assert got[0] == {"item_popularity": 11, "hard_len": 3, "long_len": 40, "short_len": 4,
                      "short_cat_count": 3, "short_item_count": 2, "long_item_count": 2, "d_category": 2,
                      "long_cat_share": 0.75}
    assert got[1] == {"item_popularity": 0, "hard_len": 0, "long_len": 2, "short_len": 0, "short_cat_count": 0,
                      "short_item_count": 0, "long_item_count": 0, "d_category": -1, "long_cat_share": 0.0}
    assert np.isnan(got[2].pop("long_cat_share"))  # no long sequence: no share (the model takes NaN)
    assert got[2] == {"item_popularity": 5, "hard_len": 0, "long_len": 0, "short_len": 1, "short_cat_count": 1,
                      "short_item_count": 1, "long_item_count": 0, "d_category": -1}


def test_item_popularity_is_point_in_time(spark, tmp_path):
    # Item 1: behaviors on 06-28 (2), 06-30 (1), 07-01 (1, late in the day), 07-02 (1). Item 2: one on 06-30.
    rows = ([beh(1, 1, 10, T0 - 3 * DAY + 60), beh(2, 1, 10, T0 - 3 * DAY + 120), beh(1, 1, 10, T0 - DAY),
             beh(3, 1, 10, T0 + 80_000), beh(1, 1, 10, T0 + DAY), beh(4, 2, 11, T0 - DAY + 5)])
    write_logs(spark, str(tmp_path), rows)
    path = delta_io.table_path(str(tmp_path), "behaviors")
    items = np.array([1, 1, 1, 1, 1, 2, 2, 9])
    dates = np.array(["2024-06-28", "2024-06-29", "2024-06-30", "2024-07-01", "2024-07-03",
                      "2024-06-30", "2024-07-01", "2024-07-01"], dtype=object)
    # A behavior on the row's date or later never counts; an unseen item has none.
    assert reference.item_counts_before(path, items, dates).tolist() == [0, 2, 2, 3, 5, 0, 1, 0]


TRAIN, VALID, TEST = ["2024-03-01", "2024-03-02"], "2024-03-03", "2024-03-04"


@pytest.fixture(scope="module")
def lakehouse(spark, tmp_path_factory):
    """The samples of tests/test_train.py's runs (helpers.samples_table: clicks follow hard_len), a forced
    rewrite of the test date (its old files stay on disk, never to be read), and behaviors of the
    candidate items before and on the sample dates."""
    root = tmp_path_factory.mktemp("reference")
    path = delta_io.table_path(str(root), "samples")
    write_samples(spark, path, TRAIN + [VALID, TEST], 300)
    write_samples(spark, path, [TEST], 250, seed=7, force=True)
    write_candidate_behaviors(spark, root)
    return root


def write_candidate_behaviors(spark, root) -> None:
    """A behaviors table for helpers.samples_table's items (1..499), from 2024-02-25 to 2024-03-04."""
    rng = np.random.default_rng(0)
    start = 1_709_251_200 - 5 * DAY  # 2024-02-25
    write_logs(spark, str(root), [beh(int(u), int(i), 1, int(start + t)) for u, i, t in
                                  zip(rng.integers(1, 40, 3000), rng.integers(1, 500, 3000),
                                      rng.integers(0, 9 * DAY, 3000))])


def _cfg(root, checkpoints) -> dict:
    return {"lakehouse": str(root), "samples_table": "samples", "train_dates": TRAIN,
            "valid_dates": [VALID, VALID], "test_dates": [TEST, TEST], "model": {},
            "train": {"checkpoint_dir": str(checkpoints)}}


def test_reference_reads_exactly_the_rows_of_the_run(spark, lakehouse, tmp_path):
    from sim.training.loop import _reference_metrics

    cfg = _cfg(lakehouse, tmp_path / "ckpt")
    manifest = resolve_data(cfg)  # what sim.train reads
    dates = {"train": tuple(TRAIN), "valid": (VALID, VALID), "test": (TEST, TEST)}
    assert reference.manifest_for(str(lakehouse), dates) == manifest
    table = delta_io.read_table(spark, manifest.samples_path)
    behaviors = delta_io.table_path(str(lakehouse), "behaviors")
    for split, (first, last) in dates.items():
        rows = reference.split_rows(manifest, split, behaviors)
        expected = sorted(r.impression_id for r in table.where(f"dt between '{first}' and '{last}'")
                          .select("impression_id").collect())
        assert sorted(rows.impression_id.tolist()) == expected and len(expected) == manifest.rows(split)
        assert set(rows.dt) == {d for d in ([first, last] if first != last else [first])}
    assert manifest.rows("test") == 250  # the rewrite's rows only
    # A run logs the same figures with its other reference rows.
    got = reference.gbdt_reference(manifest, behaviors)
    assert 0.7 < got["gbdt_auc"] <= 1.0 and 0.7 < got["gbdt_val_auc"] <= 1.0  # clicks follow hard_len
    test = table.where(f"dt = '{TEST}'").select("hard_len", "long_len", "label").toPandas()
    stats = {"hard_nonempty_share": pytest.approx((test.hard_len > 0).mean()),
             "long_len_median": test.long_len.median()}
    assert reference.data_statistics(manifest) == stats
    pred = {"label": test.label.to_numpy(), "item_id": np.zeros(len(test), dtype=np.int64)}
    logged = _reference_metrics(cfg, manifest, pred)
    assert {k: logged[k] for k in got} == pytest.approx(got)  # the same figure for every run of the split
    assert {k: logged[k] for k in stats} == stats
    assert 0.0 <= logged["popularity_auc"] <= 1.0
    assert len(list((tmp_path / "ckpt" / "_references").glob("gbdt-*.json"))) == 1  # cached for the next run


def test_cached_reference_is_read_back_for_the_same_files_only(spark, lakehouse, tmp_path):
    behaviors = delta_io.table_path(str(lakehouse), "behaviors")
    dates = {"train": tuple(TRAIN), "valid": (VALID, VALID), "test": (TEST, TEST)}
    manifest = reference.manifest_for(str(lakehouse), dates)
    first = reference.cached_gbdt_reference(manifest, behaviors, tmp_path)
    [cached] = tmp_path.glob("gbdt-*.json")
    record = json.loads(cached.read_text())
    assert record["metrics"] == first and record["samples_version"] == manifest.samples_version
    record["metrics"]["gbdt_auc"] = -1.0  # marks a figure that can only come from the file
    cached.write_text(json.dumps(record))
    assert reference.cached_gbdt_reference(manifest, behaviors, tmp_path)["gbdt_auc"] == -1.0
    # Another split of the same snapshot is another key: computed, not read.
    other = reference.manifest_for(str(lakehouse), {**dates, "valid": (TRAIN[1], TRAIN[1])})
    assert 0.0 <= reference.cached_gbdt_reference(other, behaviors, tmp_path)["gbdt_auc"] <= 1.0
    assert len(list(tmp_path.glob("gbdt-*.json"))) == 2


def test_reference_cli_prints_the_figures(lakehouse, capsys):
    code = reference.main(["--lakehouse", str(lakehouse), "--train-dates", *TRAIN, "--valid-dates", VALID,
                           "--test-dates", TEST])
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0 and out["test_rows"] == 250 and out["train_rows"] == 600
    assert 0.7 < out["gbdt_auc"] <= 1.0 and out["feature_set"] == reference.FEATURE_SET
    assert 0.0 < out["hard_nonempty_share"] < 1.0 and out["long_len_median"] > 0
