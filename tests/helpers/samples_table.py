"""Write a small samples table with the pipeline's schema and a learnable signal, straight from numpy.

Tests of training use it to stay independent of the nightly jobs; tests/test_end_to_end.py covers the
real pipeline (generator, UBT and samples jobs, horovodrun training, comparison). Clicks are more
likely when the user has history in the candidate's category.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from sim.adapters import delta_io
from sim.samples.contract import SAMPLES, SAMPLES_COLUMNS
from sim.formats.packing import pack


def samples_frame(n: int, date: str, seed: int, short: int = 8, hard: int = 10, long: int = 20,
                  n_users: int = 40) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    users = rng.integers(1, n_users + 1, n)
    cats = rng.integers(1, 20, n)
    rows = []
    for i in range(n):
        hard_len = int(rng.integers(0, hard + 1)) if rng.random() < 0.5 else 0
        long_len = int(rng.integers(hard_len, long + 1))
        short_len = int(rng.integers(0, short + 1))
        p = 0.15 + 0.7 * (hard_len > 0)
        seq = lambda k, vals: pack(vals[:k])  # noqa: E731  (the real elements only, as the job stores them)
        long_cats = np.concatenate([np.full(hard_len, cats[i]), rng.integers(1, 20, long_len - hard_len)])
        rows.append({
            "impression_id": int(seed * 1_000_000 + i), "user_id": int(users[i]),
            "item_id": int(rng.integers(1, 500)), "category_id": int(cats[i]),
            "ts": 1_700_000_000 + i, "label": int(rng.random() < p), "p_click": float(p),
            "p_click_short": 0.5,
            "short_items": seq(short_len, rng.integers(1, 500, short)),
            "short_cats": seq(short_len, rng.integers(1, 20, short)),
            "short_gaps": seq(short_len, rng.integers(1, 10, short).astype(np.int32)),
            "hard_items": seq(hard_len, rng.integers(1, 500, hard)),
            "hard_cats": seq(hard_len, np.full(hard, cats[i])),
            "hard_gaps": seq(hard_len, rng.integers(1, 30, hard).astype(np.int32)),
            "long_items": seq(long_len, rng.integers(1, 500, long)),
            "long_cats": seq(long_len, long_cats),
            "long_gaps": seq(long_len, rng.integers(1, 30, long).astype(np.int32)),
            "short_len": short_len, "hard_len": hard_len, "long_len": long_len,
            "d_category": int(rng.integers(0, 100)) if hard_len else -1, "dt": date,
        })
    return pd.DataFrame(rows)


def write_samples(spark, path: str, dates: list[str], rows_per_date: int, files_per_date: int = 3,
                  seed: int = 1, force: bool = False) -> None:
    for i, d in enumerate(dates):
        frame = samples_frame(rows_per_date, d, seed=seed + i)[list(SAMPLES_COLUMNS)]
        df = spark.createDataFrame(frame, SAMPLES)
        delta_io.write_date(df.repartition(files_per_date), path, job="test_samples", date=d, force=force)
