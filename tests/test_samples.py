"""Point-in-time samples: hand-computed sequences for a few users and impressions, caps, count mode,
the time-gap buckets, rejects, the leak guard, and the job on Delta (time travel, idempotent re-run)."""
from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
from pyspark.sql import functions as F

from sim.config import ConfigError
from sim.adapters.delta_io import (MissingTableError, commit_metadata, latest_version, log_commit_metadata,
                                   read_table, table_path, version_for_date)
from sim.samples.transforms import (ID_MARK, LEAK_MARK, build_sequences, first_leak, split_impressions,
                                    time_gap_bucket, to_samples)
from sim.samples.contract import (ID_MAX, PACKED_COLUMNS, SAMPLES, SAMPLES_COLUMNS, LeakError, SampleSpec,
                                  SamplesInputError, unpack, with_sequence_arrays)
from sim.samples.job import build_samples, build_samples_replay
from sim.inputs.schema import BEHAVIORS, IMPRESSIONS
from sim.samples.contract import TRAINING_COLUMNS
from sim.ubt.settings import Caps, Windows
from sim.ubt.transforms import aggregate_ubt
from sim.ubt.job import build_ubt
from sim.ubt.dates import day_start, shift_date
from test_ubt import beh, imp, small_delta_snapshots, write_logs  # noqa: F401  (fixture re-used)

H, DAY = 3600, 86400
D = "2024-07-01"
T0 = day_start(D) + 12 * H  # impressions at noon of D

# user 1: every case of the list; user 2: no history; user 3: more behaviors than the caps.
BEHAVIOR_ROWS = [
    beh(1, 101, 10, T0 - 600),  # a: same day, before t
    beh(1, 102, 10, T0 + 600),  # b: same day, after t (in for impression 3 at T0 + 1200)
    beh(1, 103, 10, T0 - 181 * DAY),  # c: 181 days old: out
    beh(1, 104, 20, T0 - 15 * DAY),  # d: 15 days old: long, not short
    beh(1, 105, 20, T0 - 2 * DAY),  # e
    beh(1, 106, 30, T0 - 180 * DAY + H),  # f: first day of UBT(D-1), inside (t - 180d, t)
    beh(1, 107, 30, T0 - 180 * DAY - 4 * H),  # g: first day of UBT(D-1), before t - 180d: out
    beh(1, 108, 10, T0 - 100 * DAY),  # h
] + [beh(3, 300 + k, 50, T0 - 7 * k * H) for k in range(1, 11)]  # 301 newest .. 310 oldest
IMPRESSION_ROWS = [
    imp(1, 1, 900, 10, T0, 1, 0.7, 0.4), imp(2, 1, 901, 20, T0), imp(3, 1, 902, 10, T0 + 1200),
    imp(4, 2, 903, 10, T0), imp(5, 1, 904, 40, T0), imp(6, 3, 905, 50, T0),
]
SPEC = SampleSpec(Windows(long_days=180, short_days=14), Caps(short_cap=4, hard_k=3, long_cap=5))

# Hand-computed: (short items, gaps), (hard items, gaps), (long items, cats, gaps), long_len, d_category.
# Gap buckets 1 + floor(log2(1 + hours)): 10 min -> 1, 30 min -> 1, 7 h -> 4, 14 h -> 4, 21 h -> 5,
# 28 h -> 5, 35 h -> 6, 2 d -> 6, 15 d -> 9, 100 d -> 12, 180 d - 1 h -> 13.
EXPECTED = {
    1: dict(short=([101, 105, 0, 0], [1, 6, 0, 0]), hard=([101, 108, 0], [1, 12, 0]),
            long=([101, 105, 104, 108, 106], [10, 20, 20, 10, 30], [1, 6, 9, 12, 13]),
            lens=(2, 2, 5), d_category=0),
    2: dict(short=([101, 105, 0, 0], [1, 6, 0, 0]), hard=([105, 104, 0], [6, 9, 0]),
            long=([101, 105, 104, 108, 106], [10, 20, 20, 10, 30], [1, 6, 9, 12, 13]),
            lens=(2, 2, 5), d_category=2),
    3: dict(short=([102, 101, 105, 0], [1, 1, 6, 0]), hard=([102, 101, 108], [1, 1, 12]),
            long=([102, 101, 105, 104, 108], [10, 10, 20, 20, 10], [1, 1, 6, 9, 12]),
            lens=(3, 3, 6), d_category=0),
    4: dict(short=([0] * 4, [0] * 4), hard=([0] * 3, [0] * 3), long=([0] * 5, [0] * 5, [0] * 5),
            lens=(0, 0, 0), d_category=-1),
    5: dict(short=([101, 105, 0, 0], [1, 6, 0, 0]), hard=([0] * 3, [0] * 3),
            long=([101, 105, 104, 108, 106], [10, 20, 20, 10, 30], [1, 6, 9, 12, 13]),
            lens=(2, 0, 5), d_category=-1),
    6: dict(short=([301, 302, 303, 304], [4, 4, 5, 5]), hard=([301, 302, 303], [4, 4, 5]),
            long=([301, 302, 303, 304, 305], [50] * 5, [4, 4, 5, 5, 6]), lens=(4, 3, 10), d_category=0),
}


def _inputs(spark, rows=BEHAVIOR_ROWS, impressions=IMPRESSION_ROWS, spec=SPEC):
    """(impressions of D, UBT(D-1), behaviors of D, behaviors of D - long_days) as DataFrames."""
    b = spark.createDataFrame(rows, BEHAVIORS)
    prev = shift_date(D, -1)
    hist = b.where(F.col("dt") <= prev)
    if spec.windows.mode == "time":
        hist = hist.where(F.col("dt") >= shift_date(D, -spec.windows.long_days))
    ubt = aggregate_ubt(hist)
    i = spark.createDataFrame(impressions, IMPRESSIONS)
    first = b.where(F.col("dt") == shift_date(D, -spec.windows.long_days))
    return i, ubt, b.where(F.col("dt") == D), first


def _real(*padded: list[int]) -> tuple[list[int], ...]:
    """The expectations are written padded to the caps; the table stores the real elements only."""
    return tuple([v for v in values if v] for values in padded)


def _check(rows, expected, long_cap: int = SPEC.caps.long_cap):
    """``rows``: samples rows as :func:`with_sequence_arrays` reads them back."""
    got = {r.impression_id: r for r in rows}
    assert set(got) == set(expected)
    for iid, e in expected.items():
        r = got[iid]
        assert (r.short_items, r.short_gaps) == _real(*e["short"]), iid
        assert (r.hard_items, r.hard_gaps) == _real(*e["hard"]), iid
        assert (r.long_items, r.long_cats, r.long_gaps) == _real(*e["long"]), iid
        assert (r.short_len, r.hard_len, r.long_len) == e["lens"], iid
        assert r.d_category == e["d_category"], iid
        # Stored lengths: the real ones, the long one capped; categories align with items; the hard
        # sequence holds only the candidate's category.
        assert (len(r.short_items), len(r.hard_items)) == (r.short_len, r.hard_len), iid
        assert len(r.long_items) == min(r.long_len, long_cap), iid
        assert r.hard_cats == [r.category_id] * r.hard_len, iid
        assert len(r.short_cats) == len(r.short_items) and len(r.long_gaps) == len(r.long_items), iid


def test_time_gap_bucket(spark):
    gaps = [1, 3599, 3600, 3 * H, 7 * H, 15 * DAY, 1000 * H]
    row = spark.range(1).select(*[time_gap_bucket(F.lit(g)).alias(f"g{i}") for i, g in enumerate(gaps)],
                                time_gap_bucket(F.lit(1000 * H), 8).alias("capped")).first()
    assert list(row)[:-1] == [1, 1, 2, 3, 4, 9, 10]
    assert row.capped == 7  # 1 + min(8 - 2, 9)
    assert all(list(row)[i] == 1 + min(62, math.floor(math.log2(1 + g / 3600))) for i, g in enumerate(gaps))
    # Exact at every bucket boundary: 1 + g/3600 = 2^k starts bucket k + 1.
    edges = ([((2 ** k - 1) * H, k + 1) for k in range(1, 40)]
             + [((2 ** k - 1) * H - 1, k) for k in range(1, 40)])
    got = spark.range(1).select(*[time_gap_bucket(F.lit(g)) for g, _ in edges]).first()
    assert list(got) == [b for _, b in edges]


def exact_bucket(gap_seconds: int, r: int, n: int = 64) -> int:
    """1 + min(n - 2, floor(r * log2(1 + hours))) in integers: floor(log2(x^r)) = bit_length(x^r) - 1."""
    return 1 + min(n - 2, ((gap_seconds // H + 1) ** r).bit_length() - 1)


def test_time_gap_bucket_per_octave_exact_monotone_never_padding(spark):
    """r buckets per doubling of the hours: every whole hour of the 180-day window and every 97th hour of
    20 years (each with the last second before it) get exactly the integer formula's bucket (r = 1: the
    log2 bucket of every table written before the option), never 0 (padding), non-decreasing in the gap."""
    n, rs = 64, (1, 2, 3, 4, 8)
    hours = sorted(set(range(0, 181 * 24)) | set(range(0, 20 * 365 * 24, 97)) | {2 ** k for k in range(18)})
    gaps = sorted({h * H for h in hours} | {h * H - 1 for h in hours if h} | {1})
    frame = spark.createDataFrame([(g,) for g in gaps], "g long")
    got = frame.select("g", *[time_gap_bucket(F.col("g"), n, r).alias(f"r{r}") for r in rs]).toPandas()
    got = got.sort_values("g")
    for r in rs:
        assert got[f"r{r}"].tolist() == [exact_bucket(int(g), r, n) for g in got.g], r
        assert got[f"r{r}"].min() >= 1 and got[f"r{r}"].is_monotonic_increasing, r


def test_time_gap_bucket_boundaries_r1_and_r4(spark):
    """Bucket edges by hand: r = 1 doubles the hours per bucket (21.3 to 42.6 days share one); r = 4
    splits each doubling in four (edges where 1 + hours reaches 2^(j/4)): those days fill four buckets."""
    cases = {  # (gap, r) -> bucket
        (H - 1, 1): 1, (H, 1): 2, (3 * H - 1, 1): 2, (3 * H, 1): 3,
        (511 * H, 1): 10, (1022 * H, 1): 10, (1023 * H, 1): 11,  # 21.3 to 42.6 days: one bucket
        (H - 1, 4): 1, (H, 4): 5,  # 1 + 1 hour = 2: 4 * log2(2) = 4; whole hours leave buckets 2-4 empty
        (2 * H, 4): 7,  # 4 * log2(3) = 6.34
        (3 * H, 4): 9,  # 4 * log2(4) = 8 exactly
        (15 * H - 1, 4): 16, (15 * H, 4): 17,  # 4 * log2(15) = 15.6, 4 * log2(16) = 16 exactly
        (511 * H, 4): 37, (1022 * H, 4): 40,  # the r = 1 bucket of 21-42 days is four buckets here
        (180 * DAY - 1, 4): 49,  # the long window's oldest gap: 4 * log2(4320) = 48.3
    }
    row = spark.range(1).select(*[time_gap_bucket(F.lit(g), 64, r).alias(f"c{i}")
                                  for i, (g, r) in enumerate(cases)]).first()
    assert dict(zip(cases, row)) == cases
    assert all(exact_bucket(g, r) == b for (g, r), b in cases.items())


def test_time_gap_scale_is_refused_where_the_long_window_needs_more_buckets():
    """Time mode: an r whose long window reaches past the last bucket is refused, naming the fix;
    the defaults (180 days, r = 1, 64 buckets) use 13 buckets, r = 5 fits in 64 and r = 6 does not.
    Count mode only warns: its gaps have no bound, the last bucket is 'older than' by design."""
    from sim.config import load_pipeline_conf
    w = Windows(long_days=180, short_days=14)
    for r in (1, 4, 5):
        SampleSpec(w, SPEC.caps, 64, time_gap_per_octave=r)
    with pytest.raises(ConfigError, match=r"time_gap_per_octave=6 gives gaps of the 180-day long window bucket "
                                          r"ids up to 73 .* set time_gap_buckets >= 74 or time_gap_per_octave <= 5"):
        SampleSpec(w, SPEC.caps, 64, time_gap_per_octave=6)
    with pytest.raises(ConfigError, match=r"time_gap_per_octave=6 gives"):
        load_pipeline_conf(overrides=["time_gap_per_octave=6"])
    assert load_pipeline_conf(overrides=["time_gap_per_octave=6", "time_gap_buckets=74"]).time_gap_per_octave == 6
    count = SampleSpec(Windows(mode="count", long_count=4, short_count=2), Caps(short_cap=2, hard_k=2, long_cap=4),
                       64, time_gap_per_octave=8)
    assert count.last_bucket_hours == 215  # 1 + 215 = 216 >= 2^(62 / 8) = 215.3
    assert exact_bucket(215 * H, 8) == 63 and exact_bucket(214 * H, 8) == 62
    assert count.sizes["time_gap_per_octave"] == 8 and SPEC.sizes["time_gap_per_octave"] == 1


def test_hand_computed_sequences(spark):
    seqs = build_sequences(*_inputs(spark), SPEC, D)
    out = to_samples(seqs, SPEC)
    assert tuple(out.columns) == SAMPLES_COLUMNS and set(TRAINING_COLUMNS) <= set(out.columns)
    assert [f.dataType.simpleString() for f in out.schema] == [f.dataType.simpleString() for f in SAMPLES]
    rows = with_sequence_arrays(out).collect()
    _check(rows, EXPECTED)
    one = next(r for r in rows if r.impression_id == 1)
    assert (one.label, one.p_click, one.p_click_short, one.dt, one.item_id) == (1, 0.7, 0.4, D, 900)
    # The stored bytes: 4 per real element, read the same by numpy (training) as by Spark above.
    stored = {r.impression_id: r for r in out.collect()}
    for r in rows:
        for c in PACKED_COLUMNS:
            raw = bytes(stored[r.impression_id][c])
            assert len(raw) == 4 * len(r[c]) and unpack(raw).tolist() == r[c], (r.impression_id, c)
    # The gap columns follow the spec's time_gap_per_octave: at r = 4 every stored gap is the exact
    # bucket of impression time minus behavior time.
    spec4 = SampleSpec(SPEC.windows, SPEC.caps, 64, time_gap_per_octave=4)
    ts_of, checked = {b[1]: b[4] for b in BEHAVIOR_ROWS}, 0
    for r in with_sequence_arrays(to_samples(seqs, spec4)).collect():
        for seq in ("short", "hard", "long"):
            want = [exact_bucket(r.ts - ts_of[i], 4) for i in r[f"{seq}_items"]]
            assert r[f"{seq}_gaps"] == want, (r.impression_id, seq)
            checked += len(want)
        if r.impression_id == 1:  # 10 min, 2 d, 15 d, 100 d, 180 d - 1 h (r = 1: 1, 6, 9, 12, 13)
            assert r.long_gaps == [1, 23, 34, 45, 49]
    assert checked > 20


def test_count_mode_last_n(spark):
    spec = SampleSpec(Windows(mode="count", long_count=3, short_count=2),
                      Caps(short_cap=2, hard_k=2, long_cap=4))
    imps = [IMPRESSION_ROWS[0]]
    rows = with_sequence_arrays(
        to_samples(build_sequences(*_inputs(spark, impressions=imps, spec=spec), spec), spec)).collect()
    r = rows[0]
    # Short = the last 2 before t regardless of time (a, e); long = the 3 before them (d, h, f), disjoint,
    # below long_cap 4; hard = the candidate's category within the long part; the 181-day-old counts.
    assert r.short_items == [101, 105] and r.long_items == [104, 108, 106]
    assert not set(r.short_items) & set(r.long_items)
    assert r.hard_items == [108] and (r.long_len, r.d_category) == (7, 0)


def test_count_mode_caps_smaller_than_windows_are_refused():
    with pytest.raises(ConfigError, match=r"caps.short_cap=50 < windows.short_count=100"):
        SampleSpec(Windows(mode="count", long_count=400, short_count=100), Caps(short_cap=50, long_cap=1000))
    with pytest.raises(ConfigError, match=r"caps.long_cap=300 < windows.long_count=400"):
        SampleSpec(Windows(mode="count", long_count=400, short_count=50), Caps(short_cap=50, long_cap=300))
    # Time mode caps its windows by design.
    SampleSpec(Windows(mode="time"), Caps(short_cap=50, long_cap=300))


def test_leak_guard_names_first_offending_impression(spark):
    planted = BEHAVIOR_ROWS + [(1, 666, 20, "pv", T0 + 5, shift_date(D, -1))]  # future ts in UBT(D-1)
    seqs = build_sequences(*_inputs(spark, rows=planted), SPEC, D)
    assert first_leak(seqs) == (1, T0)
    with pytest.raises(Exception, match=LEAK_MARK):
        to_samples(seqs, SPEC).collect()
    assert first_leak(build_sequences(*_inputs(spark), SPEC, D)) is None


def test_ids_beyond_int32_fail_the_samples_instead_of_being_truncated(spark):
    big = BEHAVIOR_ROWS + [beh(3, ID_MAX + 1, 50, T0 - 3 * H)]  # in user 3's sequences
    with pytest.raises(Exception, match=f"{ID_MARK}: impression_id=6 has an item or category id outside"):
        to_samples(build_sequences(*_inputs(spark, rows=big), SPEC, D), SPEC, guard=False).collect()
    edge = BEHAVIOR_ROWS + [beh(3, ID_MAX, 50, T0 - 3 * H)]  # the largest id that fits is kept whole
    rows = with_sequence_arrays(to_samples(build_sequences(*_inputs(spark, rows=edge), SPEC, D), SPEC)
                                .where("impression_id = 6")).collect()
    assert rows[0].short_items[:2] == [ID_MAX, 301]


def test_split_impressions_rejects_with_reasons(spark):
    rows = IMPRESSION_ROWS[:1] + [imp(7, 1, 1, 10, T0 + DAY)[:8] + (D,)]
    valid, rejects = split_impressions(spark.createDataFrame(rows, IMPRESSIONS), D)
    assert [r.impression_id for r in valid.collect()] == [1]
    rej = rejects.collect()
    assert [(r.source, r.reason, r.dt) for r in rej] == [
        ("build_samples", "ts_outside_dt", D)]


def test_samples_job_time_travel_rerun_and_planted_leak(spark, tmp_path):
    """The job on Delta: UBT(D-1) by time travel even after UBT(D) exists, hand-computed rows, a
    re-run changes nothing, a planted future behavior fails the job naming the impression."""
    lh = str(tmp_path)
    bad_imp = imp(99, 1, 1, 10, T0 + DAY)[:8] + (D,)  # ts on D+1 under dt = D: rejected
    write_logs(spark, lh, BEHAVIOR_ROWS, IMPRESSION_ROWS + [bad_imp])
    with pytest.raises((SamplesInputError, MissingTableError), match="build_ubt.py --date 2024-06-30"):
        build_samples(spark, lh, D, SPEC)
    build_ubt(spark, lh, D, SPEC.windows, SPEC.caps, backfill_from=shift_date(D, -1))  # UBT(D-1), UBT(D)
    res = build_samples(spark, lh, D, SPEC)
    ubt_path, out = table_path(lh, "ubt"), table_path(lh, "samples")
    assert res.ubt_version == version_for_date(spark, ubt_path, "build_ubt", shift_date(D, -1))
    assert res.ubt_version < latest_version(spark, ubt_path)
    assert (res.impressions, res.rejected) == (6, 1)
    samples = read_table(spark, out)
    _check(with_sequence_arrays(samples).collect(), EXPECTED)
    rej = read_table(spark, table_path(lh, "rejects")).where("source = 'build_samples'").collect()
    assert len(rej) == 1 and '"impression_id":99' in rej[0].raw
    # The commit records what a model must fit, time-gap scale included (checked before training).
    (meta,) = [m for _, m in log_commit_metadata(out) if m.get("job") == "build_samples"]
    assert meta["sizes"] == SPEC.sizes == {"short_cap": 4, "hard_k": 3, "long_cap": 5, "time_gap_buckets": 64,
                                           "time_gap_per_octave": 1}
    props = {r.key: r.value for r in spark.sql(f"SHOW TBLPROPERTIES delta.`{out}`").collect()}
    assert props.get("delta.enableDeletionVectors", "false") == "false"  # Petastorm reads the files

    version = latest_version(spark, out)
    again = build_samples(spark, lh, D, SPEC)
    assert again.action == "skipped" and latest_version(spark, out) == version

    # Plant a behavior after the impressions into UBT(D-1) (an index bug), as a commit tagged D-1.
    prev = shift_date(D, -1)
    ubt_prev = read_table(spark, ubt_path, res.ubt_version)
    future = F.array(F.struct(F.lit(T0 + 5).alias("ts"), F.lit(666).cast("long").alias("item_id"),
                              F.lit("pv").alias("behavior_type")))
    row = (F.col("user_id") == 1) & (F.col("category_id") == 20)
    planted = ubt_prev.withColumn("behaviors", F.when(row, F.concat(future, "behaviors"))
                                  .otherwise(F.col("behaviors")))
    with commit_metadata(spark, {"job": "build_ubt", "date": prev, "op": "planted"}):
        planted.write.format("delta").mode("overwrite").save(ubt_path)
    with pytest.raises(LeakError, match=r"impression_id=1 \(ts="):
        build_samples(spark, lh, D, SPEC, force=True)
    assert latest_version(spark, out) == version  # nothing committed


def test_replay_equals_nightly_path_in_count_mode(spark, tmp_path):
    """Count mode: one replay pass over the behaviors gives, for every date of a range, the same rows
    as the nightly path (UBT(D-1) by time travel + day-D behaviors before t), in one commit; a re-run
    is skipped; time mode is refused."""
    spec = SampleSpec(Windows(mode="count", long_count=4, short_count=2),
                      Caps(short_cap=2, hard_k=2, long_cap=4))
    first, last = shift_date(D, -1), D
    # Impressions on D-1 and D (user 1 sees its same-day behaviors before and after t on both days).
    imps = IMPRESSION_ROWS + [imp(20 + k, u, 910 + k, c, T0 - DAY + k * H)
                              for k, (u, c) in enumerate([(1, 10), (1, 20), (3, 50), (2, 10)])]
    rows = BEHAVIOR_ROWS + [beh(1, 120 + k, 10 + 10 * (k % 2), T0 - DAY + k * H - 60) for k in range(4)]
    nightly, replay = tmp_path / "nightly", tmp_path / "replay"
    for lh in (nightly, replay):
        write_logs(spark, lh, rows, imps)
    build_ubt(spark, str(nightly), last, spec.windows, spec.caps, backfill_from=shift_date(first, -1))
    for d in (first, last):
        build_samples(spark, str(nightly), d, spec)
    res = build_samples_replay(spark, str(replay), first, last, spec)
    assert (res.action, res.impressions, res.ubt_version) == ("written", len(imps), None)
    assert not (replay / "ubt").exists()
    key = ["dt", "impression_id"]
    want = read_table(spark, table_path(str(nightly), "samples")).select(*SAMPLES_COLUMNS).orderBy(key)
    got = read_table(spark, table_path(str(replay), "samples")).select(*SAMPLES_COLUMNS).orderBy(key)
    want_rows, got_rows = want.collect(), got.collect()
    assert {r.dt for r in got_rows} == {first, last} and len(got_rows) == len(imps)
    assert got_rows == want_rows
    version = latest_version(spark, table_path(str(replay), "samples"))
    assert build_samples_replay(spark, str(replay), first, last, spec).action == "skipped"
    assert latest_version(spark, table_path(str(replay), "samples")) == version
    with pytest.raises(ConfigError, match="windows.mode=count"):
        build_samples_replay(spark, str(replay), first, last, SPEC)


def _age_table(spark, path: str, days: int) -> list[str]:
    """Back-date a Delta table by ``days``: its data files' modification times and the deletion
    timestamps its log records for the files commits removed (what VACUUM compares with the retention).
    Returns the removed files' paths."""
    import json
    import time
    then_ms = int((time.time() - days * 86400) * 1000)
    removed = []
    for log in sorted(Path(path, "_delta_log").glob("*.json")):
        actions = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
        for a in actions:
            if "remove" in a:
                a["remove"]["deletionTimestamp"] = then_ms
                removed.append(a["remove"]["path"])
        log.write_text("".join(json.dumps(a) + "\n" for a in actions))
        log.with_name(f".{log.name}.crc").unlink(missing_ok=True)  # Hadoop's checksum of the old text
    for f in Path(path).rglob("*.parquet"):
        os.utime(f, (then_ms / 1000, then_ms / 1000))
    spark._jvm.org.apache.spark.sql.delta.DeltaLog.clearCache()  # the session re-reads the log
    return removed


def test_backfill_horizon_survives_vacuum_and_refuses_older_dates(spark, tmp_path):
    """The UBT and samples tables declare retention for the backfill horizon; after a VACUUM with the
    table's own retention the oldest promised date rebuilds to the same rows, and a date whose UBT(D-1)
    is older than the horizon fails with a message that says so (not with a missing-file error)."""
    from sim.adapters.delta_io import RETENTION_PROPERTIES
    lh = str(tmp_path)
    write_logs(spark, lh, BEHAVIOR_ROWS, IMPRESSION_ROWS)
    spec = SampleSpec(Windows(long_days=180, short_days=14, segment_days=2), SPEC.caps, backfill_days=30)
    # D+1 has no behaviors in these logs: allowed, so that UBT(D) is not the latest version.
    build_ubt(spark, lh, shift_date(D, 1), spec.windows, spec.caps, backfill_from=shift_date(D, -1),
              allow_empty=True)
    first = build_samples(spark, lh, D, spec)
    ubt_path, out = table_path(lh, "ubt"), table_path(lh, "samples")
    for path in (ubt_path, out):
        props = {r.key: r.value for r in spark.sql(f"SHOW TBLPROPERTIES delta.`{path}`").collect()}
        assert [props.get(k) for k in RETENTION_PROPERTIES] == ["interval 30 days"] * 2, path
    before = sorted(read_table(spark, out).select("impression_id", "hard_items", "long_items").collect())
    # Make every file of the UBT 20 days old, and every removal of one: inside the 30-day horizon,
    # outside Delta's default of 7, so a VACUUM without the table's retention would delete UBT(D-1)'s
    # files that later nights replaced (and the rebuild below would fail on them).
    removed = _age_table(spark, ubt_path, days=20)
    assert removed, "no UBT(D-1) file was replaced by a later night: the VACUUM below would prove nothing"
    spark.sql(f"VACUUM delta.`{ubt_path}`")  # the table's own retention
    assert all(Path(ubt_path, f).exists() for f in removed)
    again = build_samples(spark, lh, D, spec, force=True)
    assert again.ubt_version == first.ubt_version
    assert sorted(read_table(spark, out).select("impression_id", "hard_items", "long_items").collect()) == before
    # The same date with a horizon of 0 days: UBT(D-1) is older than that, and the error says what to do.
    short = SampleSpec(spec.windows, spec.caps, backfill_days=0)
    with pytest.raises(SamplesInputError, match=r"past the backfill horizon of 0 days.*--backfill FROM --force"):
        build_samples(spark, lh, D, short, force=True)


def test_samples_rerun_is_a_noop_only_with_the_settings_and_inputs_of_the_commit(spark, tmp_path):
    """A committed date is skipped when today's run would record the same settings and inputs (caps,
    windows, the impressions and behaviors files of the day, UBT(D-1)); otherwise it is refused naming
    each change and --force, and nothing is written; forced, it is rebuilt and recorded anew."""
    from test_ubt import _rewrite_day
    lh = str(tmp_path)
    write_logs(spark, lh, BEHAVIOR_ROWS, IMPRESSION_ROWS)
    prev = shift_date(D, -1)
    build_ubt(spark, lh, prev, SPEC.windows, SPEC.caps, backfill_from=prev)
    out = table_path(lh, "samples")
    assert build_samples(spark, lh, D, SPEC).action == "written"
    version = latest_version(spark, out)
    assert build_samples(spark, lh, D, SPEC).action == "skipped"

    wider = SampleSpec(SPEC.windows, Caps(short_cap=4, hard_k=3, long_cap=6))
    with pytest.raises(SamplesInputError, match=r"(?s)caps\.long_cap: built with 5, now 6.*--force"):
        build_samples(spark, lh, D, wider)
    shorter = SampleSpec(Windows(long_days=180, short_days=7), SPEC.caps)
    with pytest.raises(SamplesInputError, match=r"windows\.short_days: built with 14, now 7"):
        build_samples(spark, lh, D, shorter)
    assert latest_version(spark, out) == version
    res = build_samples(spark, lh, D, wider, force=True)
    assert res.action == "written" and latest_version(spark, out) > version
    assert build_samples(spark, lh, D, wider).action == "skipped"

    # Re-imported impressions of D: refused naming them; forced, rebuilt from them.
    _rewrite_day(spark, lh, "impressions", D)
    version = latest_version(spark, out)
    with pytest.raises(SamplesInputError, match=rf"impressions \(dt = '{D}'\).*rewritten"):
        build_samples(spark, lh, D, wider)
    assert latest_version(spark, out) == version
    assert build_samples(spark, lh, D, wider, force=True).action == "written"
    assert build_samples(spark, lh, D, wider).action == "skipped"
    # UBT(D-1) rebuilt since: refused naming it.
    build_ubt(spark, lh, prev, SPEC.windows, SPEC.caps, backfill_from=prev, force=True)
    with pytest.raises(SamplesInputError, match=rf"ubt: built on build_ubt {prev} .*rebuilt since"):
        build_samples(spark, lh, D, wider)


def test_samples_of_a_day_without_impressions_or_behaviors_are_refused_unless_allowed(spark, tmp_path):
    """A day whose impressions or behaviors are not there is not committed (they may land later),
    unless --allow-empty says the day had none; the refusal names the table."""
    lh = str(tmp_path)
    before_d = [r for r in BEHAVIOR_ROWS if r[-1] < D]
    write_logs(spark, lh, before_d, [imp(7, 1, 900, 10, T0 - DAY)])  # impressions of D-1 only
    prev = shift_date(D, -1)
    build_ubt(spark, lh, prev, SPEC.windows, SPEC.caps, backfill_from=prev)
    out = table_path(lh, "samples")
    with pytest.raises(SamplesInputError, match=rf"(?s)impressions has no rows for {D}.*--allow-empty"):
        build_samples(spark, lh, D, SPEC)
    write_logs(spark, lh, before_d, IMPRESSION_ROWS)
    with pytest.raises(SamplesInputError, match=rf"(?s)behaviors has no rows for {D}.*nothing committed"):
        build_samples(spark, lh, D, SPEC)
    assert latest_version(spark, out) is None
    res = build_samples(spark, lh, D, SPEC, allow_empty=True)
    assert (res.action, res.impressions) == ("written", len(IMPRESSION_ROWS))
    assert build_samples(spark, lh, D, SPEC).action == "skipped"
