"""Importers: each format on a small file written here, bad lines included; exact counts of behaviors,
impressions and rejects, and the public-data protocol (next behavior = positive, untouched item =
negative)."""
from __future__ import annotations

import json
import re
from collections import Counter

import pytest
from pyspark.sql import functions as F

from sim.inputs.canonical import SEQUENCE_ID_MAX, day_start_ts, stable_id
from sim.adapters.delta_io import read_table, table_path
from sim.inputs.ingest import run_import
from sim.inputs.validation import ValidationError
from helpers.inprocess import call_main, session_settings_kept

D1 = day_start_ts("2017-11-26")
NOW = day_start_ts("2030-01-01")


def _write(path, lines, encoding="utf-8"):
    path.write_bytes(("\n".join(lines) + "\n").encode(encoding))
    return path


def _tables(spark, lakehouse):
    beh = read_table(spark, table_path(str(lakehouse), "behaviors"))
    imp = read_table(spark, table_path(str(lakehouse), "impressions"))
    rej = read_table(spark, table_path(str(lakehouse), "rejects"))
    return beh, imp, rej


def _reasons(rej, source=None):
    df = rej if source is None else rej.where(F.col("source") == source)
    return Counter(r.reason for r in df.collect())


def _check_protocol(beh, imp, users_with_targets):
    """One positive per user with >= 2 behaviors = their last behavior; the negative is untouched."""
    b = beh.collect()
    touched = {(r.user_id, r.item_id) for r in b}
    last = {}
    for r in b:
        key = (r.ts, r.item_id, r.category_id, r.behavior_type)
        if r.user_id not in last or key > last[r.user_id][0]:
            last[r.user_id] = (key, r)
    imps = imp.collect()
    pos = [r for r in imps if r.label == 1]
    neg = [r for r in imps if r.label == 0]
    assert sorted(r.user_id for r in pos) == sorted(users_with_targets)
    for r in pos:
        assert (r.item_id, r.ts) == (last[r.user_id][1].item_id, last[r.user_id][1].ts)
    for r in neg:
        assert (r.user_id, r.item_id) not in touched
        assert any(p.user_id == r.user_id and p.ts == r.ts for p in pos)
    assert all(r.p_click is None for r in imps)
    assert len({r.impression_id for r in imps}) == len(imps)
    return pos, neg


# Taobao --------------------------------------------------------------------------------------------
TAOBAO_LINES = [
    f"1,101,11,pv,{D1 + 10}",
    f"1,102,11,pv,{D1 + 20}",
    f"1,103,12,buy,{D1 + 86400}",
    f"2,101,11,pv,{D1 + 10}",
    f"2,104,13,cart,{D1 + 30}",
    f"2,104,13,cart,{D1 + 30}",  # duplicate_event
    f"3,105,12,fav,{D1 + 40}",  # only behavior of user 3: no impression
    f"4,106,14,pv,{D1 + 50}",
    f"4,107,14,pv,{D1 + 60}",
    f"1,106,12,click,{D1}",  # unknown_behavior_type
    f"x,101,11,pv,{D1}",  # bad_id
    "4,101,11,pv",  # malformed_line
    f"5,101,11,pv,{day_start_ts('2017-11-20')}",  # ts_outside_run_date (before 2017-11-25)
    f"6,101,-3,pv,{D1}",  # negative_id
    "",  # malformed_line
]


def test_taobao(spark, tmp_path):
    f = _write(tmp_path / "UserBehavior.csv", TAOBAO_LINES)
    lake = tmp_path / "lake"
    report = run_import(spark, "taobao", str(f), str(lake), max_reject_ratio=0.9,
                        date_range=("2017-11-25", "2017-12-03"), now_ts=NOW)
    (c,) = report.inputs
    assert (c.counts.read, c.counts.accepted, c.counts.rejected) == (15, 8, 7)
    beh, imp, rej = _tables(spark, lake)
    assert beh.count() == 8
    assert _reasons(rej) == Counter({"malformed_line": 2, "duplicate_event": 1, "unknown_behavior_type": 1,
                                     "bad_id": 1, "ts_outside_run_date": 1, "negative_id": 1})
    assert {r.raw for r in rej.where("reason = 'bad_id'").collect()} == {f"x,101,11,pv,{D1}"}
    pos, neg = _check_protocol(beh, imp, users_with_targets=[1, 2, 4])
    assert imp.count() == 6 and len(neg) == 3
    assert {r.dt for r in rej.collect()} == {"2017-11-27"}  # the run's date: the data's last day
    assert sorted(r.dt for r in beh.select("dt").distinct().collect()) == ["2017-11-26", "2017-11-27"]
    # Same inputs again: nothing is rewritten.
    again = run_import(spark, "taobao", str(f), str(lake), max_reject_ratio=0.9,
                       date_range=("2017-11-25", "2017-12-03"), now_ts=NOW)
    assert not any(again.committed.values())
    assert read_table(spark, table_path(str(lake), "rejects")).count() == 7


def test_reject_ratio_fails_before_writing(spark, tmp_path):
    f = _write(tmp_path / "UserBehavior.csv", TAOBAO_LINES)
    lake = tmp_path / "lake"
    with pytest.raises(ValidationError) as e:
        run_import(spark, "taobao", str(f), str(lake), max_reject_ratio=0.05,
                   date_range=("2017-11-25", "2017-12-03"), now_ts=NOW)
    assert "taobao:behaviors: 7 of 15 rows rejected" in str(e.value)
    assert "malformed_line (2 rows)" in str(e.value)
    assert not (lake / "behaviors").exists()


# MovieLens -----------------------------------------------------------------------------------------
RECBOLE_INTER = [
    "user_id:token\titem_id:token\trating:float\ttimestamp:float",
    "1\t10\t5\t881250949",
    "1\t20\t3\t881250950",
    "1\t30\t4\t881250951.0",
    "2\t10\t2\t881250949",
    "2\t40\t4\t881250960",
    "2\t99\t4\t881250961",  # unknown_item
    "3\t10\tfive\t881250949",  # bad_rating
    "3\t10",  # malformed_line
    "0\t10\t4\t881250949",  # zero_id
]
RECBOLE_ITEM = [
    "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq",
    "10\tToy Story\t1995\tAnimation Children's Comedy",
    "20\tGoldenEye\t1995\tAction Adventure Thriller",
    "30\tFour Rooms\t1995\tThriller",
    "40\tGet Shorty\t1995\tAction Comedy Drama",
    "40\tGet Shorty again\t1995\tComedy",  # duplicate_item
    "50\tNo Genre\t1995\t",  # missing_category
    "abc\tBad\t1995\tDrama",  # bad_id
]


def _category_ids(spark, names, max_id: int | None = SEQUENCE_ID_MAX):
    """The ids stable_id gives ``names``: 31 bits for items and categories, ``max_id=None`` for users."""
    ids = [stable_id(F.lit(n)) if max_id is None else stable_id(F.lit(n), max_id) for n in names]
    row = spark.range(1).select(*[c.alias(str(i)) for i, c in enumerate(ids)]).first()
    return {n: row[str(i)] for i, n in enumerate(names)}


def test_movielens_recbole(spark, tmp_path):
    d = tmp_path / "ml-100k"
    d.mkdir()
    _write(d / "ml-100k.inter", RECBOLE_INTER)
    _write(d / "ml-100k.item", RECBOLE_ITEM)
    lake = tmp_path / "lake"
    report = run_import(spark, "movielens", str(d), str(lake), max_reject_ratio=0.9, now_ts=NOW)
    counts = {c.name: (c.counts.read, c.counts.accepted, c.counts.rejected) for c in report.inputs}
    assert counts == {"movielens:items": (7, 4, 3), "movielens:ratings": (9, 5, 4)}
    beh, imp, rej = _tables(spark, lake)
    assert _reasons(rej, "movielens:items") == Counter({"duplicate_item": 1, "missing_category": 1, "bad_id": 1})
    assert _reasons(rej, "movielens:ratings") == Counter({"unknown_item": 1, "bad_rating": 1,
                                                          "malformed_line": 1, "zero_id": 1})
    cats = _category_ids(spark, ["Animation", "Action", "Thriller"])
    rows = {(r.user_id, r.item_id): r for r in beh.collect()}
    assert len(rows) == 5
    assert rows[(1, 10)].category_id == cats["Animation"] and rows[(1, 10)].behavior_type == "fav"
    assert rows[(1, 20)].behavior_type == "pv" and rows[(1, 20)].category_id == cats["Action"]
    assert rows[(1, 30)].ts == 881250951 and rows[(1, 30)].category_id == cats["Thriller"]
    # The first of the duplicated item's lines by raw order wins: "40\tGet Shorty\t..." (Action).
    assert rows[(2, 40)].category_id == cats["Action"]
    pos, neg = _check_protocol(beh, imp, users_with_targets=[1, 2])
    assert (len(pos), len(neg), imp.count()) == (2, 2, 4)
    assert {r.item_id for r in neg if r.user_id == 1} == {40}



def test_every_behavior_protocol_import_records_its_settings(spark, tmp_path):
    """--protocol every through the import: a positive per behavior after the user's first, and the
    protocol in the behaviors and impressions commits; another negatives scheme is another write."""
    from sim.adapters.delta_io import job_commits
    from sim.inputs.importers import Protocol
    d = tmp_path / "ml-100k"
    d.mkdir()
    _write(d / "ml-100k.inter", RECBOLE_INTER)
    _write(d / "ml-100k.item", RECBOLE_ITEM)
    lake = tmp_path / "lake"
    p = Protocol(mode="every", negatives="popularity", min_user_behaviors=2)
    report = run_import(spark, "movielens", str(d), str(lake), max_reject_ratio=0.9, now_ts=NOW, protocol=p)
    beh, imp, _ = _tables(spark, lake)
    pos = sorted((r.user_id, r.item_id) for r in imp.where("label = 1").collect())
    assert pos == [(1, 20), (1, 30), (2, 40)]  # user 1: 10, 20, 30; user 2: 10, 40 (time order)
    touched = {(r.user_id, r.item_id) for r in beh.collect()}
    assert all((r.user_id, r.item_id) not in touched for r in imp.where("label = 0").collect())
    assert report.notes["positives"] == 3
    assert report.notes["negatives"] + report.notes["missing_negatives"] == 3
    expected = {"seed": 7, "protocol": "every", "attempts": 20, "min_history": 1, "negatives_per_positive": 1,
                "negatives": "popularity", "min_user_behaviors": 2, "same_time": "order"}
    for table in ("behaviors", "impressions"):
        assert job_commits(spark, table_path(str(lake), table))[-1].metadata["import"] == expected
    again = run_import(spark, "movielens", str(d), str(lake), max_reject_ratio=0.9, now_ts=NOW,
                       protocol=Protocol(mode="every"))
    assert again.committed["impressions"]
    assert job_commits(spark, table_path(str(lake), "impressions"))[-1].metadata["import"]["negatives"] == "uniform"


def test_movielens_ml100k_grouplens(spark, tmp_path):
    d = tmp_path / "ml-100k"
    d.mkdir()
    flags = lambda *on: "|".join("1" if i in on else "0" for i in range(19))  # noqa: E731
    _write(d / "u.item", [
        f"1|Toy Story (1995)|01-Jan-1995||http://us.imdb.com/M/title-exact?Toy%20Story%20(1995)|{flags(3, 4, 5)}",
        f"2|GoldenEye (1995)|01-Jan-1995||http://x|{flags(1, 2, 16)}",
        f"3|Caf\xe9 Society (1995)|01-Jan-1995||http://x|{flags(8)}",  # latin-1 title
        f"4|Nothing (1995)|01-Jan-1995||http://x|{flags()}",  # no flag: 'unknown'
        "5|Broken|01-Jan-1995",  # malformed_line
    ], encoding="latin-1")
    _write(d / "u.data", ["196\t1\t3\t881250949", "196\t2\t4\t881250950", "196\t3\t5\t881250951",
                          "22\t4\t1\t881250949", "22\t1\t4\t881250952", "22\t5\t4\t881250953",  # unknown_item
                          "22\t2\t4"])  # malformed_line
    lake = tmp_path / "lake"
    report = run_import(spark, "movielens", str(d), str(lake), max_reject_ratio=0.9, now_ts=NOW)
    counts = {c.name: (c.counts.read, c.counts.accepted, c.counts.rejected) for c in report.inputs}
    assert counts == {"movielens:items": (5, 4, 1), "movielens:ratings": (7, 5, 2)}
    beh, imp, rej = _tables(spark, lake)
    cats = _category_ids(spark, ["Animation", "Action", "Drama", "unknown"])
    by_item = {r.item_id: r.category_id for r in beh.collect()}
    assert by_item == {1: cats["Animation"], 2: cats["Action"], 3: cats["Drama"], 4: cats["unknown"]}
    assert _reasons(rej) == Counter({"malformed_line": 2, "unknown_item": 1})
    pos, neg = _check_protocol(beh, imp, users_with_targets=[196, 22])
    assert imp.count() == 4


def test_movielens_latest_csv(spark, tmp_path):
    d = tmp_path / "ml-latest-small"
    d.mkdir()
    _write(d / "movies.csv", ["movieId,title,genres", "1,Toy Story (1995),Adventure|Animation|Children",
                              '11,"American President, The (1995)",Comedy|Drama|Romance',
                              "12,Dracula: Dead and Loving It (1995),Comedy|Horror", "bad line"])
    _write(d / "ratings.csv", ["userId,movieId,rating,timestamp", "1,1,4.0,964982703", "1,11,4.5,964981247",
                               "1,12,2.5,964982224", "2,1,3.5,1445714835", "2,11,oops,1445714836",
                               "2,12,5.0,2445714836"])  # bad_rating, ts_in_future (2047)
    lake = tmp_path / "lake"
    report = run_import(spark, "movielens", str(d), str(lake), max_reject_ratio=0.9, now_ts=NOW)
    counts = {c.name: (c.counts.read, c.counts.accepted, c.counts.rejected) for c in report.inputs}
    assert counts == {"movielens:items": (4, 3, 1), "movielens:ratings": (6, 4, 2)}
    beh, imp, rej = _tables(spark, lake)
    cats = _category_ids(spark, ["Comedy", "Adventure"])
    by_item = {r.item_id: r.category_id for r in beh.collect()}
    assert by_item[11] == cats["Comedy"] and by_item[1] == cats["Adventure"]
    assert _reasons(rej) == Counter({"malformed_line": 1, "bad_rating": 1, "ts_in_future": 1})
    pos, neg = _check_protocol(beh, imp, users_with_targets=[1])  # user 2 has one accepted behavior
    # User 1 touched every item of the catalog: no negative exists, and the report says so.
    assert (imp.count(), len(neg), report.notes["missing_negatives"]) == (1, 0, 1)


# Amazon --------------------------------------------------------------------------------------------
def test_amazon(spark, tmp_path):
    d = tmp_path / "amazon"
    d.mkdir()
    reviews = [
        {"reviewerID": "A1", "asin": "B001", "overall": 5.0, "unixReviewTime": 1400000000},
        {"reviewerID": "A1", "asin": "B002", "overall": 2.0, "unixReviewTime": 1400000100},
        {"reviewerID": "A1", "asin": "B003", "overall": 4.0, "unixReviewTime": 1400086400},
        {"reviewerID": "A2", "asin": "B001", "overall": 3.0, "unixReviewTime": 1400000000},
        {"reviewerID": "A2", "asin": "B004", "overall": 1.0, "unixReviewTime": 1400000500},
        {"reviewerID": "A2", "asin": "B009", "overall": 1.0, "unixReviewTime": 1400000600},  # unknown_item
        {"reviewerID": "", "asin": "B001", "overall": 1.0, "unixReviewTime": 1400000600},  # null_id
        {"reviewerID": "A3", "asin": "B001", "overall": 1.0, "unixReviewTime": "soon"},  # bad_timestamp
    ]
    _write(d / "reviews_Books_5.json", [json.dumps(r) for r in reviews] + ['{"reviewerID": "A4", "asin": '])
    _write(d / "meta_Books.json", [
        "{'asin': 'B001', 'title': \"Tom's Book\", 'categories': [['Books', 'Literature & Fiction']]}",
        "{'asin': 'B002', 'categories': [['Books', 'History'], ['Kindle']]}",
        '{"asin": "B003", "category": ["Books", "Science"]}',  # 2018 layout
        "{'asin': 'B004', 'categories': [['Books']]}",
        "{'asin': 'B005', 'categories': []}",  # missing_category
        "{'asin': 'B006', 'categories': [['Books']]",  # malformed_line
    ])
    lake = tmp_path / "lake"
    report = run_import(spark, "amazon", str(d), str(lake), max_reject_ratio=0.9, now_ts=NOW)
    counts = {c.name: (c.counts.read, c.counts.accepted, c.counts.rejected) for c in report.inputs}
    assert counts == {"amazon:meta": (6, 4, 2), "amazon:reviews": (9, 5, 4)}
    beh, imp, rej = _tables(spark, lake)
    assert _reasons(rej, "amazon:meta") == Counter({"missing_category": 1, "malformed_line": 1})
    assert _reasons(rej, "amazon:reviews") == Counter({"unknown_item": 1, "null_id": 1, "bad_timestamp": 1,
                                                       "malformed_line": 1})
    ids = {**_category_ids(spark, ["B001", "Literature & Fiction", "History", "Science"]),
           **_category_ids(spark, ["A1", "A2"], max_id=None)}
    rows = {(r.user_id, r.item_id): r for r in beh.collect()}
    assert rows[(ids["A1"], ids["B001"])].category_id == ids["Literature & Fiction"]
    assert rows[(ids["A1"], ids["B001"])].behavior_type == "fav"
    assert {r.category_id for r in rows.values()} >= {ids["History"], ids["Science"]}
    assert all(r.user_id > 0 and r.item_id > 0 for r in rows.values())
    assert max(r.item_id for r in rows.values()) <= SEQUENCE_ID_MAX  # the samples store items as int32
    _check_protocol(beh, imp, users_with_targets=[ids["A1"], ids["A2"]])
    assert imp.count() == 4


# CLI -----------------------------------------------------------------------------------------------
def test_import_cli_fails_on_too_many_rejects(spark, tmp_path, capfd, monkeypatch):
    """The CLI exits 1 naming the reason when rejects exceed validation.max_reject_ratio (default 0.05),
    before writing anything. (Its success path, summary line included, is the README's "Public datasets"
    block in tests/test_end_to_end.py; the RecBole layout's rows and rejects: test_movielens_recbole.)
    Its ``main`` runs in this process, on the session (a command that ran on would stop it: fail instead)."""
    from sim.inputs.cli_import import main
    d = tmp_path / "ml"
    d.mkdir()
    _write(d / "ml-100k.inter", RECBOLE_INTER)
    _write(d / "ml-100k.item", RECBOLE_ITEM)
    lake = tmp_path / "lake"
    monkeypatch.setattr(type(spark), "stop", lambda self: pytest.fail("the failed import stopped the session"))
    with session_settings_kept(spark):
        status, out = call_main(main, ["--format", "movielens", "--input", str(d), "--lakehouse", str(lake),
                                       "--set", "spark.conf.spark.sql.shuffle.partitions=1"], capfd, "out")
    assert status == 1, out
    assert re.search(r"import_dataset\.movielens: FAILED: movielens:(items: 3 of 7|ratings: 4 of 9) rows rejected "
                     r"\(\d+\.\d%\) exceeds validation\.max_reject_ratio=0\.05; top reasons: \w+", out), out
    assert not (lake / "behaviors").exists() and not (lake / "impressions").exists()


def test_ml100k_demo_uses_the_papers_protocol_and_windows():
    """``sim.local.demo --dataset ml-100k``: the import gets the every-behavior protocol (uniform negatives,
    popularity with --ml-negatives), the papers' count windows fit the caps, the replay is forced (its
    skip check cannot see a changed import), the last-N protocol stays reachable, and each variant is
    its own dataset in sim.compare."""
    from sim.config import load_pipeline_conf
    from sim.inputs.cli_import import parser, protocol_of
    from sim.inputs.importers import Protocol
    from sim.local.demo import main, ml100k_data_stages, ml100k_dataset, ml100k_windows, plan_ml100k

    def import_args(*variant):
        stages = ml100k_data_stages("py", "DIR", ["--lakehouse", "L"], plan_ml100k(), *variant)
        assert [k for k, _, _ in stages] == ["import", "samples"]
        assert {"--replay", "--force"} <= set(stages[1][2])
        return parser().parse_args(stages[0][2][2:])

    default = import_args()
    assert protocol_of(default) == Protocol(mode="every", min_history=1, negatives_per_positive=1)
    assert default.same_time == "order"
    assert protocol_of(import_args("every", "popularity")).negatives == "popularity"
    last = import_args("last")
    assert protocol_of(last) == Protocol(mode="last", targets_per_user=10) and last.same_time == "keep"
    cfg = load_pipeline_conf(overrides=ml100k_windows())
    assert (cfg.windows.mode, cfg.windows.short_count, cfg.windows.long_count) == ("count", 10, cfg.caps.long_cap)
    assert load_pipeline_conf(overrides=ml100k_windows("last")).windows.short_count == 50
    names = {ml100k_dataset(*v) for v in (("every", "uniform"), ("every", "popularity"), ("last", "uniform"))}
    assert names == {"ml-100k", "ml-100k-popularity", "ml-100k-last"}
    with pytest.raises(SystemExit, match="--ml-negatives needs --ml-protocol every"):
        main(["--dataset", "ml-100k", "--ml-protocol", "last", "--ml-negatives", "popularity"])


def test_movielens_100k_from_the_recbole_wheel_to_replayed_samples(spark, tmp_path):
    """The real MovieLens-100k (fetched from PyPI by sim.inputs.datasets) imports without a reject, and its
    count-mode samples, replayed in one pass, hold only behaviors before each impression."""
    from sim.inputs.datasets import ml100k
    from sim.samples.contract import SampleSpec
    from sim.samples.job import build_samples_replay
    from sim.ubt.settings import Caps, Windows

    lake = str(tmp_path / "lake")
    report = run_import(spark, "movielens", str(ml100k()), lake, max_reject_ratio=0.0, now_ts=NOW)
    counts = {c.name: (c.counts.read, c.counts.accepted, c.counts.rejected) for c in report.inputs}
    assert counts == {"movielens:items": (1682, 1682, 0), "movielens:ratings": (100000, 100000, 0)}
    beh, imp, _ = _tables(spark, lake)
    assert beh.select("user_id").distinct().count() == 943
    assert (imp.count(), imp.where("label = 1").count()) == (2 * 943, 943)
    spec = SampleSpec(Windows(mode="count", long_count=400, short_count=50),
                      Caps(short_cap=50, hard_k=200, long_cap=400))
    res = build_samples_replay(spark, lake, "1997-09-01", "1998-04-30", spec)
    assert res.impressions == 2 * 943
    s = read_table(spark, table_path(lake, "samples")).alias("s")
    # long_len is the number of the user's behaviors before t (count mode), checked independently.
    on = (F.col("b.user_id") == F.col("s.user_id")) & (F.col("b.ts") < F.col("s.ts"))
    before = (s.join(beh.alias("b"), on, "left").groupBy("s.impression_id", "s.long_len").agg(F.count("b.ts").alias("n")))
    assert before.where("n != long_len").count() == 0
    assert s.where(F.col("long_len") < 1).count() == 0  # a target is never the user's first behavior
