"""The samples job (UBT(D-1) + the day's behaviors) gives, row for row, what the obvious point-in-time
range join of impressions to raw behaviors gives (sim.samples.naive), for two impression dates."""
from __future__ import annotations

import random

from pyspark.sql import functions as F

from sim.adapters.delta_io import read_table, table_path
from sim.samples.contract import SAMPLES_COLUMNS, SampleSpec
from sim.samples.job import build_samples
from sim.samples.naive import join_samples
from sim.formats.packing import unpack
from sim.samples.transforms import build_sequences, split_impressions, to_samples
from sim.inputs.schema import BEHAVIORS, IMPRESSIONS
from sim.ubt.dates import day_start, shift_date
from sim.ubt.job import build_ubt
from sim.ubt.settings import Caps, Windows, ubt_category_cap
from sim.ubt.transforms import aggregate_ubt
from test_ubt import beh, imp, small_delta_snapshots, write_logs  # noqa: F401  (fixture re-used)

H, DAY = 3600, 86400
D = "2024-07-04"  # D-1 = 2024-07-03 ends a 7-day block: UBT(D-1) is the nightly append plus the rollup
DATES = (shift_date(D, -1), D)


def _logs(long_days: int = 180, short_days: int = 14):
    """Behaviors over the 182 days up to D and impressions on D-1 and D: random users with more history
    than the caps, plus the edges of the windows, same-day behaviors around t and a tie in time."""
    rng = random.Random(7)
    t_d = [day_start(d) + 12 * H for d in DATES]  # noon of D-1 and of D
    rows, imps = [], []
    first = day_start(shift_date(DATES[0], -long_days))
    for u in range(10, 18):
        for k in range(rng.randint(20, 70)):
            ts = rng.randint(first, day_start(D) + DAY - 1)
            c = rng.choice([1, 2, 3, 3, 4, 5, 5, 5])
            rows.append(beh(u, 1000 * u + k, c, ts, rng.choice(["pv", "buy"])))
        for j, d in enumerate(DATES):
            for k in range(3):
                ts = day_start(d) + rng.randint(0, DAY - 1)
                imps.append(imp(100 * u + 10 * j + k, u, 77, rng.choice([1, 3, 5, 6]), ts, k % 2))
    # User 1: behaviors exactly at the window edges of an impression at noon of D, the same day around t,
    # and a tie in time broken by item id.
    t = t_d[1]
    rows += [beh(1, 501, 1, t - long_days * DAY), beh(1, 502, 1, t - long_days * DAY + 1),
             beh(1, 503, 2, t - short_days * DAY), beh(1, 504, 2, t - short_days * DAY + 1),
             beh(1, 505, 1, t - 60), beh(1, 506, 1, t), beh(1, 507, 1, t + 60),
             beh(1, 509, 2, t - 2 * H), beh(1, 508, 2, t - 2 * H), beh(1, 510, 1, t_d[0] - 30)]
    imps += [imp(1, 1, 77, 1, t), imp(2, 1, 77, 2, t), imp(3, 1, 77, 1, t_d[0]), imp(4, 1, 77, 9, t)]
    # User 2: its only behavior of category 9 is on the first day UBT(D-1) holds, before t - long_days:
    # outside every sequence, yet the job's d_category counts it (long_days days ago).
    rows += [beh(2, 601, 9, day_start(shift_date(D, -long_days)) + 60), beh(2, 602, 4, t - DAY)]
    imps += [imp(5, 2, 77, 9, t), imp(6, 2, 77, 4, t - DAY + 10), imp(8, 2, 77, 4, t)]
    imps += [imp(7, 3, 77, 1, t)]  # user 3: no history at all
    return rows, imps


def _same_rows(want, joined) -> list:
    """Assert the join's rows equal ``want`` (sorted by impression_id) row for row; returns them."""
    assert tuple(joined.columns) == SAMPLES_COLUMNS
    got = joined.orderBy("impression_id").collect()
    assert [r.impression_id for r in got] == [r.impression_id for r in want]
    for w, g in zip(want, got):
        assert g == w, f"impression {w.impression_id}:\n job  {w}\n join {g}"
    return got


def _check_coverage(rows, spec: SampleSpec) -> None:
    """The comparison covers every part: caps that cut, hard and long sequences non-empty, both dates."""
    assert {r.dt for r in rows} == set(DATES)
    for d in DATES:
        day = [r for r in rows if r.dt == d]
        assert any(r.hard_len == spec.caps.hard_k for r in day), d
        assert any(0 < r.hard_len < spec.caps.hard_k for r in day), d
        assert any(r.long_len > spec.long_n for r in day), d
        assert any(r.short_len > 0 for r in day), d
    assert next(r for r in rows if r.impression_id == 7).long_len == 0


def test_build_samples_equals_the_range_join(spark, tmp_path):
    """Time mode, the jobs on Delta: UBT(D-2) full build, UBT(D-1) nightly append + block rollup, the
    samples of D-1 and of D by time travel; the join over the raw behaviors table gives the same rows."""
    spec = SampleSpec(Windows(long_days=180, short_days=14), Caps(short_cap=4, hard_k=3, long_cap=6))
    lh = str(tmp_path)
    behaviors, impressions = _logs()
    write_logs(spark, lh, behaviors, impressions)
    build_ubt(spark, lh, DATES[0], spec.windows, spec.caps, backfill_from=shift_date(DATES[0], -1))
    for d in DATES:
        build_samples(spark, lh, d, spec)
    job = read_table(spark, table_path(lh, "samples")).select(*SAMPLES_COLUMNS)
    want = job.orderBy("impression_id").collect()
    assert len(want) == len(impressions)

    imps = read_table(spark, table_path(lh, "impressions"))
    valid, _ = split_impressions(imps.where(F.col("dt").isin(*DATES)), D)
    joined = join_samples(valid, read_table(spark, table_path(lh, "behaviors")), spec)
    assert ([(f.name, f.dataType.simpleString()) for f in joined.schema]
            == [(f.name, f.dataType.simpleString()) for f in job.schema])
    _same_rows(want, joined)
    _check_coverage(want, spec)
    by_id = {r.impression_id: r for r in want}
    # Window edges: 502 (t - 180 d + 1 s) is in, 501 (exactly t - 180 d) is out; the same-day 505 is in,
    # 506 (at t) and 507 are not; the tie at t - 2 h comes out by item id, newest first.
    t = by_id[1].ts
    assert by_id[1].long_len == sum(1 for b in behaviors if b[0] == 1 and t - 180 * DAY < b[4] < t)

    def seq(r, column):  # the samples store sequences packed (sim.formats.packing)
        return unpack(bytes(r[column])).tolist()
    assert seq(by_id[1], "hard_items")[0] == 505 and 506 not in seq(by_id[1], "long_items")
    assert seq(by_id[2], "short_items")[:3] == [505, 509, 508]
    assert (by_id[5].hard_len, by_id[5].d_category) == (0, 180)


def test_count_mode_equals_the_range_join(spark):
    """Count mode, the job's transforms in memory (UBT(D'-1) by aggregate_ubt, then build_sequences and
    to_samples per date, as build_samples does without the Delta I/O): the same rows as the join."""
    spec = SampleSpec(Windows(mode="count", long_count=6, short_count=3),
                      Caps(short_cap=3, hard_k=3, long_cap=6))
    behaviors, impressions = _logs()
    b = spark.createDataFrame(behaviors, BEHAVIORS)
    valid, _ = split_impressions(spark.createDataFrame(impressions, IMPRESSIONS), D)
    parts = []
    for d in DATES:
        ubt = aggregate_ubt(b.where(F.col("dt") < d), ubt_category_cap(spec.windows, spec.caps))
        seqs = build_sequences(valid.where(F.col("dt") == d), ubt, b.where(F.col("dt") == d), None, spec, d)
        parts.append(to_samples(seqs, spec))
    want = parts[0].unionByName(parts[1]).orderBy("impression_id").collect()
    assert len(want) == len(impressions)
    _same_rows(want, join_samples(valid, b, spec))
    _check_coverage(want, spec)
