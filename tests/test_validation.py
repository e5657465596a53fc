"""Validation: every reject reason is produced by a row built for it, and read = accepted + rejected."""
from __future__ import annotations

import json

import pytest

from sim.inputs.canonical import day_start_ts
from sim.inputs.validation import (REASONS, ValidationError, check_counts, classify_behaviors,
                                   classify_impressions, classify_items, counts_of, enforce_reject_ratio,
                                   reason_counts, split, validate_behaviors)

RUN = "2024-07-01"
T0 = day_start_ts(RUN)
NOW = T0 + 12 * 3600
B_COLS = "user_id string, item_id string, category_id string, behavior_type string, ts string, " \
         "raw string, pre_reason string"
I_COLS = "impression_id string, user_id string, item_id string, category_id string, ts string, " \
         "label string, p_click string, raw string, pre_reason string"


def _b(u, i, c, t, ts, pre=None):
    fields = [u, i, c, t, ts]
    return (*fields, ",".join("" if f is None else str(f) for f in fields), pre)


BEHAVIOR_ROWS = [
    (_b("1", "10", "100", "pv", str(T0 + 100)), None),
    (_b("1", "10", "100", "pv", str(T0 + 100)), "duplicate_event"),
    (_b(" 1", "11", "100", "PV", "2024-07-01 01:00:00"), None),
    (_b("2", "12", "100", "buy", "2024-07-01T02:30"), None),
    (_b("", "10", "100", "pv", str(T0)), "null_id"),
    (_b("3", "abc", "100", "pv", str(T0)), "bad_id"),
    (_b("3", "10", "-7", "pv", str(T0)), "negative_id"),
    (_b("3", "0", "100", "pv", str(T0)), "zero_id"),
    (_b("3", "10", str(2**31), "pv", str(T0)), "id_too_large"),  # would not fit the samples' int32
    (_b(str(2**40), "10", str(2**31 - 1), "pv", str(T0 + 7)), None),  # user ids stay 64-bit
    (_b("3", "10", "100", "pv", "yesterday"), "bad_timestamp"),
    (_b("3", "10", "100", "pv", str(NOW + 3600)), "ts_in_future"),
    (_b("3", "10", "100", "pv", str(T0 - 1)), "ts_outside_run_date"),
    (_b("3", "10", "100", "click", str(T0)), "unknown_behavior_type"),
    ((None, None, None, None, None, "1,2", "malformed_line"), "malformed_line"),
    (_b("4", "13", "100", "fav", str(T0 + 5), pre="unknown_item"), "unknown_item"),
    (_b("4", "14", "100", "pv", str(T0 + 5), pre="bad_rating"), "bad_rating"),
    (_b("-4", "14", "100", "pv", str(T0 + 5), pre="bad_rating"), "negative_id"),  # field rules come first
]


def _i(iid, u, i, c, ts, label, p=None, pre=None):
    fields = [iid, u, i, c, ts, label, p]
    return (*fields, "|".join("" if f is None else str(f) for f in fields), pre)


IMPRESSION_ROWS = [
    (_i("1", "1", "10", "100", str(T0 + 60), "1", "0.3"), None),
    (_i("2", "1", "11", "100", str(T0 + 60), "0"), None),
    (_i("1", "1", "10", "100", str(T0 + 60), "1", "0.3"), "duplicate_event"),
    (_i("1", "1", "12", "100", str(T0 + 60), "0"), "duplicate_impression_id"),
    (_i("3", "1", "10", "100", str(T0 + 60), "2"), "bad_label"),
    (_i("4", "1", "10", "100", str(T0 + 60), "yes"), "bad_label"),
    (_i("5", "1", "10", "100", str(T0 + 60), "1", "1.5"), "bad_p_click"),
    (_i(None, "1", "10", "100", str(T0 + 60), "1"), "null_id"),
    (_i("7", "1", str(2**31), "100", str(T0 + 60), "1"), "id_too_large"),
    (_i("6", "1", "10", "100", str(T0 - 86400 * 3), "1"), "ts_outside_run_date"),
    ((None,) * 7 + ("x|y", "malformed_line"), "malformed_line"),
]


def _by_raw(classified):
    return {(r.raw, r.reason) for r in classified.where("reason IS NOT NULL").collect()}


def test_behavior_reasons_and_counts(spark):
    raw = spark.createDataFrame([r for r, _ in BEHAVIOR_ROWS], B_COLS)
    classified = classify_behaviors(raw, source="test", date_range=(RUN, RUN), now_ts=NOW).cache()
    expected = sorted(reason for _, reason in BEHAVIOR_ROWS if reason)
    got = sorted(r.reason for r in classified.where("reason IS NOT NULL").collect())
    assert got == expected
    # Each rejected row keeps its raw line, and the right one gets the reason.
    for row, reason in BEHAVIOR_ROWS:
        if reason and reason != "duplicate_event":
            assert (row[5], reason) in _by_raw(classified)
    counts = counts_of(raw.count(), reason_counts(classified))
    assert counts.accepted == 4 and counts.rejected == len(BEHAVIOR_ROWS) - 4
    assert counts.summary().startswith(f"read={len(BEHAVIOR_ROWS)} accepted=4 rejected={len(BEHAVIOR_ROWS) - 4}")
    check_counts(counts.read, counts.accepted, counts.rejected)
    accepted, rejects = split(classified)
    assert accepted.columns == ["user_id", "item_id", "category_id", "behavior_type", "ts", "dt"]
    rows = sorted(accepted.collect())
    assert [(r.user_id, r.item_id, r.behavior_type, r.ts, r.dt) for r in rows] == [
        (1, 10, "pv", T0 + 100, RUN), (1, 11, "pv", T0 + 3600, RUN), (2, 12, "buy", T0 + 9000, RUN),
        (2**40, 10, "pv", T0 + 7, RUN)]
    assert set(rejects.columns) == {"source", "reason", "raw"}
    assert {r.source for r in rejects.collect()} == {"test"}
    classified.unpersist()


def test_impression_reasons(spark):
    raw = spark.createDataFrame([r for r, _ in IMPRESSION_ROWS], I_COLS)
    classified = classify_impressions(raw, source="imp", date_range=(RUN, RUN), now_ts=NOW)
    got = sorted(r.reason for r in classified.where("reason IS NOT NULL").collect())
    assert got == sorted(reason for _, reason in IMPRESSION_ROWS if reason)
    acc = {r.impression_id: r for r in classified.where("reason IS NULL").collect()}
    assert set(acc) == {1, 2}
    assert acc[1].p_click == pytest.approx(0.3) and acc[1].label == 1 and acc[2].p_click is None


ITEM_ROWS = [
    (("7", "Drama", "7|Drama", None), "duplicate_item"),
    (("7", "Comedy", "7|Comedy", None), None),  # "7|Comedy" < "7|Drama": this line wins
    (("8", "", "8|", None), "missing_category"),
    (("9", "Action", "9|Action", None), None),
    (("9", "Action", "9|Action", None), "duplicate_item"),
    (("x", "Action", "x|Action", None), "bad_id"),
    ((None, None, "garbage", "malformed_line"), "malformed_line"),
]


def test_item_reasons(spark):
    raw = spark.createDataFrame([r for r, _ in ITEM_ROWS], "item_id string, category string, raw string, "
                                                           "pre_reason string")
    classified = classify_items(raw, source="items")
    got = sorted(r.reason for r in classified.where("reason IS NOT NULL").collect())
    assert got == sorted(reason for _, reason in ITEM_ROWS if reason)
    # One accepted row per item: the first line by raw ("7|Comedy" < "7|Drama").
    assert {(r.item_id, r.category) for r in classified.where("reason IS NULL").collect()} == {
        (7, "Comedy"), (9, "Action")}


def test_every_reason_is_exercised():
    exercised = {r for _, r in BEHAVIOR_ROWS + IMPRESSION_ROWS + ITEM_ROWS if r}
    assert exercised == set(REASONS)


def test_typed_input_without_raw_gets_json_payload(spark):
    df = spark.createDataFrame([(1, 10, 100, "pv", T0), (1, 10, 100, "pv", T0), (0, 10, 100, "pv", T0)],
                               "user_id long, item_id long, category_id long, behavior_type string, ts long")
    accepted, rejects = validate_behaviors(df, source="gen", date_range=(RUN, RUN), now_ts=NOW)
    assert accepted.count() == 1
    rej = {r.reason: json.loads(r.raw) for r in rejects.collect()}
    assert set(rej) == {"duplicate_event", "zero_id"}
    assert rej["zero_id"]["user_id"] == 0 and rej["duplicate_event"]["ts"] == T0


def test_check_counts_and_reject_ratio():
    check_counts(10, 7, 3)
    with pytest.raises(ValidationError, match="read 10 != accepted 7 \\+ rejected 2"):
        check_counts(10, 7, 2)
    counts = {None: 90, "bad_timestamp": 6, "null_id": 3, "zero_id": 1}
    assert enforce_reject_ratio(counts, 100, 0.2) == pytest.approx(0.1)
    with pytest.raises(ValidationError) as e:
        enforce_reject_ratio(counts, 100, 0.05)
    msg = str(e.value)
    assert "bad_timestamp (6 rows)" in msg and "null_id (3 rows)" in msg and "max_reject_ratio=0.05" in msg
