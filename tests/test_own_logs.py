"""A team's own logs in by the day (sim.inputs.own_logs, jobs/import_logs.py): column mapping and time
units, rejects with their reasons, per-date idempotency (same input: no-op; changed input: refused
naming it, rewritten with force), an empty day refused naming the table, two dates one after the other,
and README's "Run it on your logs" command as written on tests/data/own_logs.
"""
from __future__ import annotations

import datetime as dt
import json
import re
import shutil
from pathlib import Path

import pytest

from conftest import ROOT
from helpers.readme import readme_blocks, rule_for, run_block, scratch_checkout, scratch_env

D1, D2 = "2024-06-30", "2024-07-01"
DATA = ROOT / "tests" / "data" / "own_logs"
NOW = 1_800_000_000  # 2027: every test date is in the past
# The mapping of README's command, for tests/data/own_logs.
SHARED = {"user_id": "uid", "item_id": "item", "category_id": "cat"}


def _start(date: str) -> int:
    return int(dt.datetime.fromisoformat(date).replace(tzinfo=dt.timezone.utc).timestamp())


def _sources(behaviors: Path | str | None, impressions: Path | str | None):
    from sim.inputs.own_logs import LogSource
    out = []
    if behaviors is not None:
        out.append(LogSource("behaviors", str(behaviors), mapping={**SHARED, "behavior_type": "action",
                                                                    "ts": "event_time_ms"}, ts_unit="ms"))
    if impressions is not None:
        out.append(LogSource("impressions", str(impressions),
                             mapping={**SHARED, "impression_id": "id", "ts": "shown_at", "label": "clicked"},
                             ts_format="yyyy-MM-dd HH:mm:ss"))
    return out


def _import(spark, lake: Path, date: str, behaviors=None, impressions=None, **kw):
    from sim.inputs.own_logs import import_logs
    kw.setdefault("max_reject_ratio", 0.5)
    return import_logs(spark, str(lake), date, _sources(behaviors, impressions), now_ts=NOW, **kw)


def _rows(spark, lake: Path, table: str, date: str | None = None) -> list:
    df = spark.read.format("delta").load(str(lake / table))
    if date:
        df = df.where(f"dt = '{date}'")
    return sorted(tuple(r) for r in df.drop("raw").collect())


def _version(lake: Path, table: str) -> int:
    from deltalake import DeltaTable
    return DeltaTable(str(lake / table)).version()


def _csv_rows(path: Path) -> list[list[str]]:
    return [line.split(",") for line in path.read_text().splitlines()[1:]]


def test_mapping_units_and_rejects_with_reasons(spark, tmp_path):
    """Other column names, a ms timestamp (behaviors, CSV) and a formatted one (impressions, JSON lines):
    the accepted rows are the canonical rows of D in seconds; each bad row is a reject with its reason."""
    d = _start(D1)
    beh = tmp_path / "b.csv"
    beh.write_text("uid,item,cat,action,event_time_ms\n"
                   f"7,101,1,pv,{d * 1000 + 1500}\n"           # accepted, ts 1.5 s after midnight -> 1 s
                   f"7,102,1,Cart,{(d + 3600) * 1000}\n"      # accepted (types in any case)
                   f",103,1,pv,{(d + 60) * 1000}\n"           # null_id
                   f"8,104,2,pv,yesterday\n"                  # bad_timestamp
                   f"8,105,2,pv,{(d - 1) * 1000}\n"           # ts_outside_run_date: 23:59:59 the day before
                   f"8,106,2,share,{(d + 70) * 1000}\n")      # unknown_behavior_type
    imp = tmp_path / "i.jsonl"
    imp.write_text("\n".join([
        json.dumps({"id": 1, "uid": 7, "item": 101, "cat": 1, "shown_at": f"{D1} 10:00:00", "clicked": 1}),
        json.dumps({"id": 2, "uid": 7, "item": 102, "cat": 1, "shown_at": f"{D1} 11:00:00", "clicked": 3}),
        json.dumps({"id": 3, "uid": 7, "item": 102, "cat": 1, "shown_at": f"{D1} 25:00:00", "clicked": 0}),
        '{"id": 4, "uid": 7,',
    ]) + "\n")
    lake = tmp_path / "lake"
    report = _import(spark, lake, D1, beh, imp, max_reject_ratio=0.8)
    assert _rows(spark, lake, "behaviors") == [(7, 101, 1, "pv", d + 1, D1), (7, 102, 1, "cart", d + 3600, D1)]
    assert _rows(spark, lake, "impressions") == [(1, 7, 101, 1, d + 36000, 1, None, None, D1)]
    rejects = spark.read.format("delta").load(str(lake / "rejects")).collect()
    by_reason = {(r.source, r.reason): r.raw for r in rejects}
    assert set(by_reason) == {("import_logs:behaviors", "null_id"), ("import_logs:behaviors", "bad_timestamp"),
                              ("import_logs:behaviors", "ts_outside_run_date"),
                              ("import_logs:behaviors", "unknown_behavior_type"),
                              ("import_logs:impressions", "bad_label"), ("import_logs:impressions", "bad_timestamp"),
                              ("import_logs:impressions", "malformed_line")}, by_reason
    assert {r.dt for r in rejects} == {D1}
    assert '"event_time_ms":"yesterday"' in by_reason[("import_logs:behaviors", "bad_timestamp")]
    assert by_reason[("import_logs:impressions", "malformed_line")] == '{"id": 4, "uid": 7,'
    assert report.written == {"behaviors": 2, "impressions": 1, "rejects": 7}
    assert "import_logs: behaviors=2 [2024-06-30..2024-06-30]" in report.summary()


def test_a_column_the_source_lacks_is_named_with_the_option_to_map_it(spark, tmp_path):
    from sim.config import ConfigError
    from sim.inputs.own_logs import LogSource, import_logs
    beh = tmp_path / "b.csv"
    beh.write_text("uid,item,cat,action,event_time_ms\n1,2,3,pv,1\n")
    with pytest.raises(ConfigError, match=r"behaviors: no column 'user_id' in .*b\.csv \(its columns: uid, item, "
                                          r"cat, action, event_time_ms\); .*--map behaviors\.user_id=COLUMN"):
        import_logs(spark, str(tmp_path / "lake"), D1, [LogSource("behaviors", str(beh))], max_reject_ratio=0.1)


def test_a_date_is_imported_once_changed_input_refused_then_forced(spark, tmp_path):
    from sim.inputs.validation import ValidationError
    day = tmp_path / "logs"
    shutil.copytree(DATA / D1, day)
    lake = tmp_path / "lake"
    first = _import(spark, lake, D1, day / "behaviors.csv")
    assert first.committed["behaviors"]
    versions = {t: _version(lake, t) for t in ("behaviors", "rejects")}
    before = _rows(spark, lake, "behaviors", D1)
    assert len(before) == len(_csv_rows(day / "behaviors.csv"))

    again = _import(spark, lake, D1, day / "behaviors.csv")
    assert again.notes["unchanged"] == "behaviors" and not again.committed
    assert {t: _version(lake, t) for t in versions} == versions

    rows = _csv_rows(day / "behaviors.csv")
    rows[0][3] = "fav" if rows[0][3] != "fav" else "cart"  # one behavior's type: same row count, other content
    (day / "behaviors.csv").write_text("uid,item,cat,action,event_time_ms\n" + "".join(",".join(r) + "\n" for r in rows))
    with pytest.raises(ValidationError) as e:
        _import(spark, lake, D1, day / "behaviors.csv")
    msg = str(e.value)
    assert f"behaviors of {D1} is committed" in msg and f"behaviors: {len(rows)} rows read from {day}/behaviors.csv " \
           f"then, {len(rows)} rows from {day}/behaviors.csv now, with other content" in msg, msg
    assert "Nothing was written. Re-import 2024-06-30 with --force" in msg, msg
    assert {t: _version(lake, t) for t in versions} == versions

    forced = _import(spark, lake, D1, day / "behaviors.csv", force=True)
    assert forced.committed["behaviors"]
    after = _rows(spark, lake, "behaviors", D1)
    key = (int(rows[0][0]), int(rows[0][1]), int(rows[0][2]), int(rows[0][4]) // 1000)
    assert len(after) == len(before) and [r[3] for r in after if (r[0], r[1], r[2], r[4]) == key] == [rows[0][3]]
    # A changed setting is a change too, named by its key.
    from sim.inputs.own_logs import LogSource, import_logs
    src = _sources(day / "behaviors.csv", None)[0]
    other = LogSource("behaviors", src.location, mapping={**src.mapping, "item_id": "cat"}, ts_unit="ms")
    with pytest.raises(ValidationError, match=r"behaviors\.map\.item_id: built with 'item', now 'cat'"):
        import_logs(spark, str(lake), D1, [other], max_reject_ratio=0.5, now_ts=NOW)


def test_an_empty_day_is_refused_naming_the_table(spark, tmp_path):
    from sim.inputs.validation import ValidationError
    beh = tmp_path / "b.csv"
    beh.write_text("uid,item,cat,action,event_time_ms\n")
    lake = tmp_path / "lake"
    with pytest.raises(ValidationError, match=rf"behaviors has no rows for {D1} in {beh} \(read=0 accepted=0 "
                                              rf"rejected=0\): nothing written\. .* --allow-empty"):
        _import(spark, lake, D1, beh)
    assert not lake.exists()
    report = _import(spark, lake, D1, beh, allow_empty=True)
    assert report.written["behaviors"] == 0 and _rows(spark, lake, "behaviors") == []
    assert _import(spark, lake, D1, beh, allow_empty=True).notes["unchanged"] == "behaviors"  # the day is done


def test_two_dates_one_after_the_other_hold_the_rows_of_both(spark, tmp_path):
    lake = tmp_path / "lake"
    template = str(DATA / "{date}" / "behaviors.csv"), str(DATA / "{date}" / "impressions.jsonl")
    for date in (D1, D2):
        _import(spark, lake, date, *template)
    got = _rows(spark, lake, "behaviors")
    expected = []
    for date in (D1, D2):
        for uid, item, cat, action, ms in _csv_rows(DATA / date / "behaviors.csv"):
            ts = int(ms) // 1000
            if _start(date) <= ts < _start(date) + 86400:
                expected.append((int(uid), int(item), int(cat), action, ts, date))
    assert got == sorted(expected)
    assert {r[-1] for r in _rows(spark, lake, "impressions")} == {D1, D2}
    # D1 again, after D2 committed: still the same input, a no-op (D1's own commit is compared).
    v = _version(lake, "behaviors")
    assert _import(spark, lake, D1, template[0]).notes["unchanged"] == "behaviors"
    assert _version(lake, "behaviors") == v


def test_a_table_of_every_day_gives_the_rows_where_selects(spark, tmp_path):
    """A Spark table (by name) and a Delta table (by path) holding two days, times in microseconds: the
    rows ``where`` selects for the date are the run's, none of the other day's is read or rejected."""
    from sim.inputs.own_logs import LogSource, detect_format, import_logs
    rows = [(1, 11, 1, "pv", (_start(D1) + 5) * 1_000_000, D1), (2, 12, 1, "buy", (_start(D2) + 7) * 1_000_000, D2),
            (2, 13, 2, "fav", (_start(D2) + 9) * 1_000_000 + 999_999, D2)]
    df = spark.createDataFrame(rows, "uid long, item long, cat long, action string, t_us long, day string")
    df.createOrReplaceTempView("team_behaviors")
    delta = tmp_path / "team_behaviors"
    df.write.format("delta").partitionBy("day").save(str(delta))
    assert detect_format("team_behaviors") == "table" and detect_format(str(delta)) == "delta"
    lake = tmp_path / "lake"
    mapping = {**SHARED, "behavior_type": "action", "ts": "t_us"}
    for date, location in ((D1, "team_behaviors"), (D2, str(delta))):
        src = LogSource("behaviors", location, mapping=mapping, ts_unit="us", where="day = '{date}'")
        report = import_logs(spark, str(lake), date, [src], max_reject_ratio=0.0, now_ts=NOW)
        assert report.inputs[0].counts.read == sum(r[-1] == date for r in rows) and not report.inputs[0].counts.rejected
    assert _rows(spark, lake, "behaviors") == [(1, 11, 1, "pv", _start(D1) + 5, D1),
                                               (2, 12, 1, "buy", _start(D2) + 7, D2),
                                               (2, 13, 2, "fav", _start(D2) + 9, D2)]


@pytest.mark.slow
def test_readme_command_runs_as_written(tmp_path):
    """README's "Run it on your logs" block, as written, in a scratch checkout holding tests/data/own_logs."""
    (block,) = [b for b in readme_blocks() if b.section == "Run it on your logs"]
    assert [rule_for(c).kind for c in block.commands] == ["logs"]
    root = scratch_checkout(tmp_path / "checkout", [
        "spark.conf.spark.driver.memory=1g", "spark.conf.spark.sql.shuffle.partitions=1",
        "spark.conf.spark.databricks.delta.snapshotPartitions=1"])
    shutil.copytree(DATA, root / "tests" / "data" / "own_logs")
    run = run_block(block, root, scratch_env(root), timeout=600)
    assert run.returncode == 0, run.describe()
    out = run.commands[0].output
    assert re.search(rule_for(block.commands[0]).marker, out), out[-3000:]
    assert "import_logs: behaviors=27 [2024-07-01..2024-07-01] impressions=20 [2024-07-01..2024-07-01] " \
           "rejects=1" in out, out[-3000:]
    assert "ts_outside_run_date=1" in out, out[-3000:]


def test_command_line_options_become_the_sources():
    from sim.config import ConfigError
    from sim.inputs.cli_logs import parser, sources_of
    args = parser().parse_args([
        "--date", D1, "--behaviors", "b/{date}.csv", "--impressions", "events", "--map", "user_id=uid",
        "--map", "behavior_type=lower(action)", "--map", "impressions.ts=shown_at", "--ts-unit", "ms",
        "--ts-unit", "impressions=s", "--input-format", "impressions=table", "--where", "impressions=day = '{date}'"])
    beh, imp = sources_of(args)
    assert (beh.table, beh.location, beh.input_format, beh.ts_unit, beh.where) == ("behaviors", "b/{date}.csv", None,
                                                                                  "ms", None)
    assert beh.mapping == {"user_id": "uid", "behavior_type": "lower(action)"}
    assert (imp.input_format, imp.ts_unit, imp.where) == ("table", "s", "day = '{date}'")
    assert imp.mapping == {"user_id": "uid", "ts": "shown_at"}
    for bad, message in ((["--map", "uid"], "expected \\[TABLE.\\]COLUMN=SOURCE"),
                         (["--map", "clicks.ts=x"], "'clicks' is not one of behaviors, impressions"),
                         (["--map", "behaviors.label=x"], "behaviors: --map names label"),
                         (["--ts-unit", "ns"], "ts unit 'ns' is not one of s, ms, us")):
        with pytest.raises(ConfigError, match=message):
            sources_of(parser().parse_args(["--date", D1, "--behaviors", "b.csv", *bad]))
    with pytest.raises(ConfigError, match="give --behaviors PATH and/or --impressions PATH"):
        sources_of(parser().parse_args(["--date", D1]))
