"""Reference rows of an evaluation: item popularity from the behaviors Delta table, read without a JVM."""
from __future__ import annotations

import numpy as np
import pytest

from sim.adapters.delta_io import table_path
from sim.training.evaluation import item_popularity, popularity_auc
from sim.training.metrics import auc
from test_ubt import beh, write_logs

DAY = 86400
T0 = 1_719_792_000  # 2024-07-01 00:00 UTC


def test_item_popularity_counts_behaviors_before_the_test_dates(spark, tmp_path):
    # Item 1: 3 behaviors before 07-01, item 2: 1, item 3: 2 but only on 07-01 itself (not counted).
    rows = ([beh(1, 1, 10, T0 - k * DAY) for k in (1, 2, 3)] + [beh(2, 2, 10, T0 - DAY)]
            + [beh(3, 3, 10, T0 + 60), beh(4, 3, 10, T0 + 120)])
    write_logs(spark, str(tmp_path), rows)
    path = table_path(str(tmp_path), "behaviors")
    items, counts = item_popularity(path, "2024-07-01")
    assert dict(zip(items.tolist(), counts.tolist())) == {1: 3, 2: 1}
    pred = {"item_id": np.array([1, 2, 3, 9, 1]), "label": np.array([1, 0, 1, 0, 0])}
    got = popularity_auc(pred, path, "2024-07-01")
    assert got == pytest.approx(auc(pred["label"], np.array([3, 1, 0, 0, 3])))
