"""The User Behavior Tree: full build, nightly updates (= full rebuild of the same date), retention,
one commit per date found by time travel, idempotent re-runs, missing D-1, forced re-runs."""
from __future__ import annotations

import datetime as dt
import json
import random
from pathlib import Path
from urllib.parse import unquote

import pytest
from pyspark.sql import functions as F

from sim.adapters.delta_io import job_commits, latest_version, read_table, table_path, version_for_date
from sim.inputs.rejects import REASONS
from sim.inputs.schema import BEHAVIORS, IMPRESSIONS
from sim.ubt.settings import Caps, UbtStateError, Windows
from sim.ubt.transforms import aggregate_ubt, ubt_view
from sim.ubt.job import build_ubt
from sim.ubt.dates import day_start, retention_first_date, segment_of, shift_date

DAY = 86400


# ------------------------------------------------------------------------------ shared helpers
def dt_of(ts: int) -> str:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).date().isoformat()


def beh(user: int, item: int, cat: int, ts: int, btype: str = "pv") -> tuple:
    return (user, item, cat, btype, ts, dt_of(ts))


def imp(iid: int, user: int, item: int, cat: int, ts: int, label: int = 0, p: float | None = None,
        p_short: float | None = None):
    return (iid, user, item, cat, ts, label, p, p_short, dt_of(ts))


def write_logs(spark, lakehouse, behaviors, impressions=(), schema=BEHAVIORS) -> None:
    """Behaviors and impressions Delta tables (partitioned by dt) from Python rows."""
    (spark.createDataFrame(list(behaviors), schema).write.format("delta").mode("overwrite")
     .partitionBy("dt").save(table_path(str(lakehouse), "behaviors")))
    if impressions:
        (spark.createDataFrame(list(impressions), IMPRESSIONS).write.format("delta").mode("overwrite")
         .partitionBy("dt").save(table_path(str(lakehouse), "impressions")))


def rows_of(df) -> list[tuple]:
    """Comparable rows: arrays of structs become tuples of tuples."""
    def conv(v):
        if isinstance(v, list):
            return tuple(conv(x) for x in v)
        if hasattr(v, "asDict"):
            return tuple(conv(x) for x in v)
        return v
    return sorted(tuple(conv(v) for v in r) for r in df.collect())


@pytest.fixture(scope="module", autouse=True)
def small_delta_snapshots(spark):
    """Delta's snapshot state uses 50 partitions by default; 2 is enough for test-sized logs."""
    key = "spark.databricks.delta.snapshotPartitions"
    old = spark.conf.get(key, None)
    spark.conf.set(key, "2")
    yield
    spark.conf.unset(key) if old is None else spark.conf.set(key, old)


# ---------------------------------------------------------------------------------- transforms
def test_aggregate_ubt_newest_first_with_counts_and_cap(spark):
    b = spark.createDataFrame([beh(1, 11, 5, 100), beh(1, 12, 5, 300), beh(1, 13, 5, 200),
                               beh(1, 14, 6, 50, "buy"), beh(2, 15, 5, 10)], BEHAVIORS)
    rows = {(r.user_id, r.category_id): r for r in aggregate_ubt(b).collect()}
    assert set(rows) == {(1, 5), (1, 6), (2, 5)}
    r = rows[(1, 5)]
    assert [(x.ts, x.item_id) for x in r.behaviors] == [(300, 12), (200, 13), (100, 11)]
    assert (r["count"], r.last_ts, r.oldest_ts) == (3, 300, 100)
    assert rows[(1, 6)].behaviors[0].behavior_type == "buy"
    capped = {(r.user_id, r.category_id): r for r in aggregate_ubt(b, category_cap=2).collect()}
    r = capped[(1, 5)]
    # The safety cap keeps the newest; count stays the uncapped number of behaviors.
    assert [x.item_id for x in r.behaviors] == [12, 13] and r["count"] == 3 and r.oldest_ts == 200


def test_segments_and_the_index_view(spark):
    """Rows per (user, category, segment of segment_days days); the view joins a key's segments newest
    first and leaves out what is older than the window (the oldest segment may still hold some)."""
    d = "2024-03-08"
    w = Windows(long_days=3, short_days=1, segment_days=2)
    assert [segment_of(x, 2) for x in ("2024-03-05", "2024-03-06", "2024-03-07", "2024-03-08")] == \
        ["2024-03-04", "2024-03-06", "2024-03-06", "2024-03-08"]
    b = spark.createDataFrame([beh(1, 11, 5, day_start("2024-03-05") + 9),  # left the window of d
                               beh(1, 12, 5, day_start("2024-03-06") + 9),
                               beh(1, 13, 5, day_start("2024-03-07") + 9),
                               beh(1, 14, 5, day_start("2024-03-08") + 9),
                               beh(2, 15, 6, day_start("2024-03-05") + 9)], BEHAVIORS)  # only old ones
    seg = {(r.user_id, r.segment): r for r in aggregate_ubt(b, segment_days=2).collect()}
    assert sorted(seg) == [(1, "2024-03-04"), (1, "2024-03-06"), (1, "2024-03-08"), (2, "2024-03-04")]
    assert [x.item_id for x in seg[(1, "2024-03-06")].behaviors] == [13, 12]
    view = {(r.user_id, r.category_id): r for r in ubt_view(aggregate_ubt(b, segment_days=2), w, d).collect()}
    assert set(view) == {(1, 5)}  # user 2's only behavior left the window
    r = view[(1, 5)]
    assert [x.item_id for x in r.behaviors] == [14, 13, 12]
    assert (r["count"], r.last_ts, r.oldest_ts) == (3, day_start(d) + 9, day_start("2024-03-06") + 9)
    assert [x.item_id for x in ubt_view(aggregate_ubt(b, segment_days=2), w, d, category_cap=2)
            .first().behaviors] == [14, 13]


def test_retention_window():
    w = Windows(long_days=180)
    assert retention_first_date(w, "2024-06-30") == "2024-01-03"  # 180 days: 01-03 .. 06-30
    assert retention_first_date(Windows(mode="count"), "2024-06-30") is None


# ------------------------------------------------------------------------------- the nightly job
FIRST = "2024-03-01"  # behaviors on 2024-03-01 .. 2024-03-08


def _random_behaviors(seed: int = 3, n: int = 90) -> list[tuple]:
    rnd = random.Random(seed)
    rows = [beh(rnd.randrange(1, 5), rnd.randrange(1, 40), rnd.randrange(1, 6),
                day_start(FIRST) + rnd.randrange(0, 8 * DAY)) for _ in range(n)]
    # A key whose only behaviors leave the window (deleted by the merge) and one new on the last day.
    rows += [beh(9, 1, 9, day_start("2024-03-04") + 100), beh(9, 2, 10, day_start("2024-03-08") + 50)]
    return rows


def _expected(spark, rows, w: Windows, date: str):
    b = spark.createDataFrame(rows, BEHAVIORS).where(
        (F.col("dt") >= retention_first_date(w, date)) & (F.col("dt") <= date))
    return rows_of(aggregate_ubt(b))


def _index(spark, path: str, w: Windows, date: str, version: int | None = None):
    return rows_of(ubt_view(read_table(spark, path, version), w, date))


def test_nightly_updates_equal_full_rebuild(spark, tmp_path):
    """UBT(D) built by a full build then nightly updates equals a full rebuild of D, for every date; one
    commit per date (plus a rollup when a block completes, a drop when one leaves the window), found by
    time travel; a night writes only the day's partition, a rollup only its block's."""
    lh = str(tmp_path)
    rows = _random_behaviors()
    write_logs(spark, lh, rows)
    w, c = Windows(long_days=3, short_days=1, segment_days=2), Caps()
    results = build_ubt(spark, lh, "2024-03-08", w, c, backfill_from="2024-03-05")
    assert [(r.date, r.action) for r in results] == [
        ("2024-03-05", "full"), ("2024-03-06", "nightly"), ("2024-03-07", "nightly"),
        ("2024-03-08", "nightly")]
    path = table_path(lh, "ubt")
    commits = job_commits(spark, path, "build_ubt")
    # Blocks of 2 days start on even epoch days (03-04, 03-06, ...). 03-06 drops the block 03-02..03-03
    # (its window starts on 03-04); 03-07 completes the block 03-06..03-07 and rolls it up; 03-08
    # drops the block 03-04..03-05.
    assert [(cm.date, cm.metadata["op"]) for cm in commits] == [
        ("2024-03-05", "full"), ("2024-03-06", "nightly"), ("2024-03-06", "expire"),
        ("2024-03-07", "nightly"), ("2024-03-07", "rollup"), ("2024-03-08", "nightly"),
        ("2024-03-08", "expire")]
    for d in ("2024-03-05", "2024-03-06", "2024-03-07", "2024-03-08"):
        assert _index(spark, path, w, d, version_for_date(spark, path, "build_ubt", d)) == \
            _expected(spark, rows, w, d), d
    segments = {r.segment for r in read_table(spark, path).select("segment").distinct().collect()}
    assert segments == {"2024-03-06", "2024-03-08"}
    # Each commit adds or removes files of its own partitions only: a night the day's, a rollup its
    # block's, a drop none (whole partitions leave by metadata); the 180-day index is never rewritten.
    def files(cm, kind: str) -> set[str]:  # partitions of the files a commit adds or removes
        actions = [json.loads(x) for x in (Path(path) / "_delta_log" / f"{cm.version:020d}.json")
                   .read_text().splitlines()]
        return {unquote(a[kind]["path"]).split("/")[0] for a in actions if kind in a}
    done = {(cm.date, cm.metadata["op"]): cm for cm in commits}
    for d in ("2024-03-06", "2024-03-07", "2024-03-08"):
        assert files(done[(d, "nightly")], "add") == {f"segment={d}"}
        assert files(done[(d, "nightly")], "remove") == set()
    rollup = done[("2024-03-07", "rollup")]
    assert files(rollup, "add") == {"segment=2024-03-06"}
    assert files(rollup, "remove") == {"segment=2024-03-06", "segment=2024-03-07"}
    assert files(done[("2024-03-08", "expire")], "add") == set()
    assert sum(int(r.touched_keys) for r in results[1:]) == len(
        {(u, c, d) for u, _, c, _, _, d in rows if "2024-03-06" <= d <= "2024-03-08"})

    # Re-running a committed date changes nothing: no new version.
    before = latest_version(spark, path)
    again = build_ubt(spark, lh, "2024-03-08", w, c)
    assert again[0].action == "skipped" and latest_version(spark, path) == before

    # A forced re-run rebuilds D from UBT(D-1): same rows, latest state is D again.
    forced = build_ubt(spark, lh, "2024-03-08", w, c, force=True)
    assert forced[0].action == "nightly"
    assert _index(spark, path, w, "2024-03-08") == _expected(spark, rows, w, "2024-03-08")
    assert version_for_date(spark, path, "build_ubt", "2024-03-08") == latest_version(spark, path)

    # The next day without D-1 fails with a message naming what to run.
    with pytest.raises(UbtStateError, match="2024-03-09"):
        build_ubt(spark, lh, "2024-03-10", w, c)


def test_missing_index_or_previous_day_fails_with_a_message(spark, tmp_path):
    lh = str(tmp_path)
    write_logs(spark, lh, _random_behaviors(n=10))
    with pytest.raises(Exception, match="backfill"):
        build_ubt(spark, lh, "2024-03-06", Windows(long_days=3, short_days=1), Caps())


def test_count_mode_keeps_everything_capped_per_category(spark, tmp_path):
    lh = str(tmp_path)
    rows = [beh(1, i, 1 + i % 2, day_start("2024-03-01") + i * 3600) for i in range(1, 9)]
    rows += [beh(1, 50, 1, day_start("2024-03-03") + 10), beh(1, 51, 2, day_start("2024-03-03") + 20)]
    write_logs(spark, lh, rows)
    w, c = Windows(mode="count", long_count=3, short_count=2), Caps(long_cap=3, short_cap=2)
    build_ubt(spark, lh, "2024-03-03", w, c, backfill_from="2024-03-02", allow_empty=True)  # none on 03-02
    rows = read_table(spark, table_path(lh, "ubt"))
    got = {r.category_id: r for r in ubt_view(rows, w, "2024-03-03", category_cap=3).collect()}
    # Nothing expires in count mode; the view capped at 3 keeps each key's newest 3.
    assert [x.item_id for x in got[1].behaviors] == [50, 8, 6] and got[1]["count"] == 5
    assert [x.item_id for x in got[2].behaviors] == [51, 7, 5] and got[2]["count"] == 5
    # The index keeps long + short = 5 per key (short and long sequences are disjoint in count mode).
    meta = {c.date: c.metadata for c in job_commits(spark, table_path(lh, "ubt"), "build_ubt")}
    assert meta["2024-03-03"]["category_cap"] == 5


def test_bad_rows_are_rejected_not_dropped(spark, tmp_path):
    lh = str(tmp_path)
    nullable = BEHAVIORS.__class__([f.__class__(f.name, f.dataType, True) for f in BEHAVIORS.fields])
    d = "2024-03-02"
    rows = [beh(1, 1, 1, day_start("2024-03-01") + 5), beh(1, 2, 1, day_start(d) + 5),
            (None, 3, 1, "pv", day_start(d) + 9, d),  # no user
            (1, 4, 1, "pv", day_start(d) - 9, d)]  # ts of the day before its dt
    write_logs(spark, lh, rows, schema=nullable)
    res = build_ubt(spark, lh, d, Windows(long_days=3, short_days=1), Caps(), backfill_from=shift_date(d, -1))
    assert res[-1].rejected == 2
    rej = sorted(read_table(spark, table_path(lh, "rejects")).collect(), key=lambda r: r.raw)
    assert [(r.source, r.dt) for r in rej] == [("build_ubt", d)] * 2
    assert '"item_id":3' in rej[0].raw and rej[0].reason == "null_id"
    assert '"item_id":4' in rej[1].raw and rej[1].reason == "ts_outside_dt"
    assert {r.reason for r in rej} <= set(REASONS)  # one vocabulary with input validation
    got = ubt_view(read_table(spark, table_path(lh, "ubt")), Windows(long_days=3, short_days=1), d).first()
    assert [x.item_id for x in got.behaviors] == [2, 1] and got["count"] == 2


def test_crash_between_rejects_and_data_is_finished_by_the_rerun(spark, tmp_path, monkeypatch):
    """A night that dies after its rejects commit and before its data commit has not happened: the
    re-run builds the date and its rejects are there once."""
    from sim.faults import InjectedCrash
    lh = str(tmp_path)
    nullable = BEHAVIORS.__class__([f.__class__(f.name, f.dataType, True) for f in BEHAVIORS.fields])
    d = "2024-03-02"
    write_logs(spark, lh, [beh(1, 1, 1, day_start("2024-03-01") + 5), beh(1, 2, 1, day_start(d) + 5),
                           (None, 3, 1, "pv", day_start(d) + 9, d)], schema=nullable)
    w, c = Windows(long_days=3, short_days=1), Caps()
    build_ubt(spark, lh, "2024-03-01", w, c, backfill_from="2024-03-01")
    monkeypatch.setenv("SIM_CRASH_AT", "build_ubt.rejects_written")
    with pytest.raises(InjectedCrash):
        build_ubt(spark, lh, d, w, c)
    monkeypatch.delenv("SIM_CRASH_AT")
    assert [x.date for x in job_commits(spark, table_path(lh, "ubt"), "build_ubt")][-1] == "2024-03-01"
    res = build_ubt(spark, lh, d, w, c)
    assert [r.action for r in res] == ["nightly"] and res[-1].rejected == 1
    rej = read_table(spark, table_path(lh, "rejects")).where(f"dt = '{d}'").collect()
    assert [(r.source, r.reason) for r in rej] == [("build_ubt", "null_id")]
    got = ubt_view(read_table(spark, table_path(lh, "ubt")), w, d).first()
    assert [x.item_id for x in got.behaviors] == [2, 1]


# ------------------------------------------------------------------ re-runs and empty input days
def _rewrite_day(spark, lh: str, table: str, day: str) -> None:
    """Write ``table``'s rows of ``day`` again, unchanged (a re-import of the day): other data files."""
    path = table_path(lh, table)
    rows = read_table(spark, path).where(F.col("dt") == day).localCheckpoint()
    rows.write.format("delta").mode("overwrite").option("replaceWhere", f"dt = '{day}'").save(path)


def test_rerun_is_a_noop_only_with_the_settings_and_inputs_of_the_commit(spark, tmp_path):
    """A committed date is skipped when today's run would record the same settings and inputs; a
    changed window or cap, or a re-imported day, is refused naming it and --force; forced, the range
    is rebuilt with the new settings; a day added to the logs is no change to the dates before it."""
    lh = str(tmp_path)
    rows = _random_behaviors()
    write_logs(spark, lh, [r for r in rows if r[-1] <= "2024-03-07"])
    w, c = Windows(long_days=3, short_days=1, segment_days=2), Caps()
    build_ubt(spark, lh, "2024-03-07", w, c, backfill_from="2024-03-06")
    path = table_path(lh, "ubt")
    before = latest_version(spark, path)
    assert [r.action for r in build_ubt(spark, lh, "2024-03-07", w, c, backfill_from="2024-03-06")] == \
        ["skipped", "skipped"]

    longer = Windows(long_days=4, short_days=1, segment_days=2)
    with pytest.raises(UbtStateError, match=r"(?s)windows\.long_days: built with 3, now 4.*--force"):
        build_ubt(spark, lh, "2024-03-07", longer, c)
    with pytest.raises(UbtStateError, match=r"caps\.ubt_category_cap: built with 0, now 2"):
        build_ubt(spark, lh, "2024-03-07", w, Caps(ubt_category_cap=2))
    assert latest_version(spark, path) == before

    # The next day's import adds a version to behaviors but leaves the committed days' files alone.
    (spark.createDataFrame([r for r in rows if r[-1] == "2024-03-08"], BEHAVIORS).write.format("delta")
     .mode("append").save(table_path(lh, "behaviors")))
    assert build_ubt(spark, lh, "2024-03-07", w, c)[0].action == "skipped"
    # A re-import of a committed day is a change: the date is refused, the day before is not.
    _rewrite_day(spark, lh, "behaviors", "2024-03-07")
    with pytest.raises(UbtStateError, match=r"behaviors \(dt = '2024-03-07'\).*rewritten"):
        build_ubt(spark, lh, "2024-03-07", w, c)
    assert build_ubt(spark, lh, "2024-03-06", w, c)[0].action == "skipped"
    assert latest_version(spark, path) == before

    # Forced: the range is rebuilt with the new window, recorded, and a re-run with it is a no-op.
    forced = build_ubt(spark, lh, "2024-03-07", longer, c, backfill_from="2024-03-06", force=True)
    assert [r.action for r in forced] == ["full", "nightly"]
    assert _index(spark, path, longer, "2024-03-07") == _expected(spark, rows, longer, "2024-03-07")
    after = latest_version(spark, path)
    assert [r.action for r in build_ubt(spark, lh, "2024-03-07", longer, c, backfill_from="2024-03-06")] == \
        ["skipped", "skipped"]
    with pytest.raises(UbtStateError, match=r"windows\.long_days: built with 4, now 3"):
        build_ubt(spark, lh, "2024-03-07", w, c)
    # A night built on a UBT(D-1) that was rebuilt since is refused naming it.
    build_ubt(spark, lh, "2024-03-06", longer, c, backfill_from="2024-03-06", force=True)
    with pytest.raises(UbtStateError, match=r"ubt: built on build_ubt 2024-03-06 .*rebuilt since"):
        build_ubt(spark, lh, "2024-03-07", longer, c)
    assert latest_version(spark, path) > after


def test_a_day_without_behaviors_is_refused_unless_allowed(spark, tmp_path, caplog):
    """An empty day is not committed (its data may land later) unless --allow-empty says it had none;
    a commit from before runs were recorded is skipped with a warning."""
    from sim.adapters.delta_io import commit_metadata
    lh = str(tmp_path)
    write_logs(spark, lh, [beh(1, 1, 1, day_start("2024-03-01") + 5), beh(1, 2, 1, day_start("2024-03-03") + 5)])
    w, c = Windows(long_days=3, short_days=1), Caps()
    path = table_path(lh, "ubt")
    with pytest.raises(UbtStateError, match=r"(?s)behaviors has no rows for 2024-03-02.*nothing committed"
                                            r".*--allow-empty"):
        build_ubt(spark, lh, "2024-03-02", w, c, backfill_from="2024-03-01")
    # The full build of 03-01 was committed; 03-02 was not.
    assert [x.date for x in job_commits(spark, path, "build_ubt")] == ["2024-03-01"]
    before = latest_version(spark, path)
    with pytest.raises(UbtStateError, match="2024-03-02"):
        build_ubt(spark, lh, "2024-03-02", w, c)
    assert latest_version(spark, path) == before
    assert [r.action for r in build_ubt(spark, lh, "2024-03-03", w, c, backfill_from="2024-03-01",
                                        allow_empty=True)] == ["skipped", "nightly", "nightly"]
    got = ubt_view(read_table(spark, path), w, "2024-03-03").first()
    assert [x.item_id for x in got.behaviors] == [2, 1]

    # A commit written before the UBT recorded its runs: skipped, with a warning that says so.
    with commit_metadata(spark, {"job": "build_ubt", "date": "2024-03-04", "op": "nightly"}):
        read_table(spark, path).limit(0).write.format("delta").mode("append").save(path)
    with caplog.at_level("WARNING"):
        assert build_ubt(spark, lh, "2024-03-04", w, c)[0].action == "skipped"
    assert "UBT(2024-03-04): committed" in caplog.text and "before runs recorded their settings" in caplog.text


def test_a_ubt_changed_after_its_last_build_is_refused_unless_only_files_were_rewritten(spark, tmp_path):
    """The nightly update reads UBT(D-1) as the table's current state: commits after the last build that
    only rewrite files (OPTIMIZE, VACUUM, table properties) are fine; any other change is refused naming
    its version and operation, and the way out."""
    lh = str(tmp_path)
    write_logs(spark, lh, [beh(1, i, 1 + i % 2, day_start(d) + 5 + i) for i, d in
                           enumerate(["2024-03-01", "2024-03-02", "2024-03-03", "2024-03-04"])])
    w, c = Windows(long_days=3, short_days=1), Caps()
    path = table_path(lh, "ubt")
    build_ubt(spark, lh, "2024-03-02", w, c, backfill_from="2024-03-01")
    spark.sql(f"OPTIMIZE delta.`{path}`")
    spark.sql(f"ALTER TABLE delta.`{path}` SET TBLPROPERTIES ('sim.note' = 'x')")
    assert [r.action for r in build_ubt(spark, lh, "2024-03-03", w, c)] == ["nightly"]
    spark.sql(f"DELETE FROM delta.`{path}` WHERE user_id = 1 AND category_id = 2")
    changed = latest_version(spark, path)
    with pytest.raises(UbtStateError, match=rf"changed after build_ubt 2024-03-03 \(version {changed}: DELETE\).*"
                                            r"--backfill FROM --force"):
        build_ubt(spark, lh, "2024-03-04", w, c)
    assert latest_version(spark, path) == changed
