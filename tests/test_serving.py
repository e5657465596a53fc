"""Online scoring from the UBT (sim.serving): the snapshot export, the request -> samples rows, the HTTP
service, and the point of it all: for every impression of a test date the service's score equals the
score the training run logged for it (test_predictions.parquet), for din, sim_hard and sim_hard_time.

The tiny pipeline (conftest.tiny_pipeline) has UBT(06-30) and the samples of 06-30 and 07-01: the
models train on 06-30 and are scored on 07-01 (validation and test both on 07-01: the experiment config
refuses overlapping splits, so the test date is set on the loaded config; the one epoch needs no pick).
"""
from __future__ import annotations

import re
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import ROOT, free_port, subprocess_env
from helpers.serving import ThreadServer, get, post, wait_for_port

TEST_DATE = "2024-07-01"
SNAPSHOT = "2024-06-30"
TINY = ["model.emb_dim=4", "model.item_buckets=101", "model.category_buckets=11", "model.mlp_dims=[16,8]",
        "train.batch_size=16", "train.eval_batch_size=7", "train.threads=1", "train.epochs=1",
        "train.patience=0", "train.loader_workers=1", "train.length_buckets=0"]
MODELS = ("din", "sim_hard", "sim_hard_time")


# ------------------------------------------------------------------------------------------- helpers
def train_in_process(lake: Path, tmp: Path, expid: str, uri: str) -> str:
    """One epoch of ``expid`` on the tiny samples, tracked to ``uri``; returns the run id."""
    from sim.adapters import tracking
    from sim.config.experiment import load_experiment
    from sim.training.loop import train
    cfg = load_experiment(ROOT / "conf/experiments.yaml", expid, [
        *TINY, f"lakehouse={lake}", f"tracking_uri={uri}", "experiment=serving",
        f"train.checkpoint_dir={tmp / 'ckpt'}", "train_dates=[2024-06-30,2024-06-30]",
        "valid_dates=[2024-07-01,2024-07-01]", "test_dates=[2024-07-02,2024-07-02]"])
    cfg["test_dates"] = [TEST_DATE, TEST_DATE]  # see the module docstring
    train(cfg)
    runs = tracking.search_runs(["serving"], uri=uri, filter_string=f"tags.mlflow.runName = '{expid}'")
    return runs.sort_values("start_time").iloc[-1].run_id


# ------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def exported(spark, tiny_pipeline, tmp_path_factory):
    """UBT(06-30) of the tiny pipeline exported into a store, the behaviors of 07-01 loaded by the
    micro-batch of the append path."""
    from sim.config import load_pipeline_conf
    from sim.samples.contract import SampleSpec
    from sim.serving.export import append_day, export_ubt
    from sim.serving.store import SqliteStore
    from helpers.tiny_data import TINY_PIPELINE
    spec = SampleSpec.from_conf(load_pipeline_conf(overrides=TINY_PIPELINE))
    path = tmp_path_factory.mktemp("serving") / "ubt.sqlite"
    store = SqliteStore(path, create=True)
    result = export_ubt(spark, str(tiny_pipeline.full), SNAPSHOT, spec, store)
    loaded = append_day(spark, str(tiny_pipeline.full), TEST_DATE, store)
    assert result.users > 0 and result.keys > 0 and loaded > 0
    return path


@pytest.fixture(scope="module")
def exported_redis(redis_server, spark, tiny_pipeline) -> str:
    """The same export and micro-batch as ``exported``, into the Redis store (a real redis-server);
    the ``--store`` URL (its own key prefix on the session's server)."""
    from sim.config import load_pipeline_conf
    from sim.samples.contract import SampleSpec
    from sim.serving.export import append_day, export_ubt
    from sim.serving.store import open_store
    from helpers.tiny_data import TINY_PIPELINE
    spec = SampleSpec.from_conf(load_pipeline_conf(overrides=TINY_PIPELINE))
    url = f"{redis_server.url}?prefix=consistency"
    store = open_store(url)
    result = export_ubt(spark, str(tiny_pipeline.full), SNAPSHOT, spec, store)
    loaded = append_day(spark, str(tiny_pipeline.full), TEST_DATE, store)
    assert result.users > 0 and result.keys > 0 and loaded > 0
    return url


@pytest.fixture(params=["sqlite", "redis"])
def served_store(request) -> str:
    """``--store`` of the exported snapshot: the embedded store's file, or the Redis store's URL."""
    return str(request.getfixturevalue("exported" if request.param == "sqlite" else "exported_redis"))


@pytest.fixture(scope="module")
def test_impressions(spark, tiny_pipeline) -> pd.DataFrame:
    """The samples rows of the test date (sequences as arrays)."""
    from sim.adapters.delta_io import read_table
    from sim.formats.packing import unpack_frame
    df = read_table(spark, str(tiny_pipeline.full / "samples")).where(f"dt = '{TEST_DATE}'").toPandas()
    return unpack_frame(df).sort_values("impression_id").reset_index(drop=True)


@pytest.fixture(scope="module")
def runs(tiny_pipeline, tmp_path_factory) -> dict:
    """din, sim_hard and sim_hard_time trained one epoch each, tracked to a SQLite MLflow store:
    {expid: (run id, model uri)} and the tracking URI."""
    from sim.adapters import tracking
    tmp = tmp_path_factory.mktemp("serving-runs")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    out = {}
    for expid in MODELS:
        run_id = train_in_process(tiny_pipeline.full, tmp, expid, uri)
        out[expid] = (run_id, tracking.run_tag(run_id, "model_uri", uri))
    return {"uri": uri, "runs": out}


# --------------------------------------------------------------------------------------------- tests
def test_time_gap_buckets_in_numpy_follow_the_samples_rule():
    """1 + min(n - 2, floor(r * log2(1 + hours))) in integers (the rule the Spark expression is tested
    against in tests/test_samples.py), at every whole hour up to past the last boundary."""
    from sim.config.pipeline import time_gap_index
    from sim.serving.rows import time_gap_bucket
    near = {(1 << j) + d for j in range(46) for d in (-2, -1, 0, 1)}  # the boundaries of r = 1
    near |= {int(np.ceil(2 ** (k / r))) + d for r in (3, 4) for k in range(63) for d in (-2, -1, 0)}
    hours = np.asarray(sorted({h for h in near if h >= 0} | set(range(20_000))), dtype=np.int64)
    gaps = np.concatenate([hours * 3600, hours * 3600 + 3599])
    for n, r in ((64, 1), (64, 4), (20, 1), (40, 3), (100, 1)):
        want = np.asarray([1 + min(n - 2, time_gap_index(int(g) // 3600, r)) for g in gaps])
        assert np.array_equal(time_gap_bucket(gaps, n, r), want), (n, r)


@pytest.fixture(params=["sqlite", "redis"])
def new_store(request, tmp_path) -> str:
    """``--store`` of an empty store: a file of the embedded store, or a key prefix of its own on the
    session's Redis server."""
    if request.param == "sqlite":
        from sim.serving.store import SqliteStore
        SqliteStore(tmp_path / "ubt.sqlite", create=True)
        return str(tmp_path / "ubt.sqlite")
    return f"{request.getfixturevalue('redis_server').url}?prefix=t{abs(hash(request.node.nodeid)) % 10**8}"


def test_the_snapshot_switch_never_mixes_two_dates_under_concurrent_reads(new_store):
    """Readers in threads while snapshots of ten dates are exported one after the other: every read sees
    one snapshot whole (each record of a snapshot carries its date), never a key of another. In the
    embedded store and in the Redis store (where the dropped snapshots' keys go once no reader can be
    on them, and a reader that still were gets an error, not half a snapshot)."""
    from sim.serving.store import CategoryRecord, StoreUnavailable, UserRecord, open_store
    from sim.ubt.dates import epoch_day, shift_date
    store = open_store(new_store)
    users, cats = 30, 20
    dates = [shift_date("2024-06-01", i) for i in range(10)]

    def export(date: str) -> None:
        day = epoch_day(date)
        w = store.new_snapshot(date, {"settings": {}})
        w.put_users((u, UserRecord(np.full(5, day), np.arange(5), np.arange(5), day, np.zeros(0, np.int64)))
                    for u in range(users))
        w.put_categories((u, k, CategoryRecord(np.full(3, day), np.arange(3), day))
                         for u in range(users) for k in range(cats))
        w.switch()

    export(dates[0])
    seen, problems, done = set(), [], threading.Event()

    def reader() -> None:
        rs = open_store(new_store)
        rng = np.random.default_rng(threading.get_ident() % 1000)
        while not done.is_set():
            u = int(rng.integers(users))
            try:
                with rs.view() as v:
                    day = epoch_day(v.info.date)
                    got = {v.user(u).ubt_count, *(r.last_ts for r in v.categories(u, range(cats)).values())}
                    seen.add(v.info.date)
            except StoreUnavailable as e:
                problems.append(str(e))
                return
            if got != {day}:
                problems.append(f"snapshot {v.info.date}: user {u} read {sorted(got)}")
        rs.close()

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    for d in dates[1:]:
        export(d)
    time.sleep(0.2)
    done.set()
    for t in threads:
        t.join()
    assert not problems, problems[:3]
    assert len(seen) >= 3  # the readers did read across switches
    assert store.current().date == dates[-1]
    assert store.snapshot_dates() == dates[-2:]  # older snapshots dropped after the switch
    if "://" in new_store:
        c, p = store.client, store.prefix

        def generations_with_keys() -> set[int]:
            return {int(k.split(b":")[1]) for k in c.scan_iter(match=f"{p}:*") if k.split(b":")[1].isdigit()}

        assert len(generations_with_keys()) > 2  # retired, not yet dropped: a reader may still be on them
        with store.view() as v:  # a reader on UBT(dates[-1]) while two more dates retire it
            export(shift_date(dates[-1], 1))
            export(shift_date(dates[-1], 2))
            store.collect(now=time.time() + store.retire_grace_s + 1)
            assert generations_with_keys() == {len(dates) + 1, len(dates) + 2}
            with pytest.raises(StoreUnavailable, match="dropped UBT.* while a request read it"):
                v.user(0)


@pytest.mark.slow  # the tiny pipeline (Spark) and three trainings
def test_request_rows_equal_the_samples_jobs_rows(exported, test_impressions, spark):
    """Each test-date impression rebuilt from the store (UBT(06-30) + the day's behaviors before its
    time) is exactly its samples row: every sequence, length and d_category."""
    from sim.serving.store import SqliteStore
    imp = test_impressions
    assert not _rows_mismatches(SqliteStore(exported), imp)
    assert (imp.long_len > 0).any() and (imp.hard_len > 0).any() and (imp.short_len > 0).any()


def _rows_mismatches(store, imp: pd.DataFrame) -> list[tuple]:
    """(impression, column, samples value, served value) of each column of the samples rows ``imp``
    (sequences as arrays) that the rows rebuilt from ``store`` (UBT(SNAPSHOT) + the day's behaviors before
    each impression's time) do not equal; the first five."""
    from sim.formats.packing import PACKED_COLUMNS
    from sim.serving.rows import RowSpec, build_rows
    from sim.serving.service import request_date
    mismatches = []
    for (user, ts), group in imp.groupby(["user_id", "ts"]):
        with store.view(request_date(ts)) as v:
            assert v.info.date == SNAPSHOT
            rows = build_rows(RowSpec.from_settings(v.info.meta["settings"]), user, ts, group.item_id,
                              group.category_id, v.user(user), v.categories(user, group.category_id),
                              v.behaviors_after(user, ts), impression_ids=group.impression_id).frame()
        for (_, want), (_, got) in zip(group.iterrows(), rows.iterrows()):
            for c in [*PACKED_COLUMNS, "short_len", "hard_len", "long_len", "d_category", "item_id", "category_id"]:
                if not np.array_equal(np.asarray(want[c]), np.asarray(got[c])):
                    mismatches.append((int(want.impression_id), c, np.asarray(want[c]).tolist(),
                                       np.asarray(got[c]).tolist()))
    return mismatches[:5]


@pytest.mark.slow  # the tiny pipeline (Spark) and three trainings
def test_the_service_scores_every_test_impression_as_the_run_logged_it(served_store, test_impressions, runs):
    """THE consistency test: through HTTP, for din, sim_hard and sim_hard_time, the score of every
    impression of the test date equals the run's test_predictions.parquet score (1e-5), served from the
    embedded store and from the Redis store (the same runs: trained once). sim_hard is served by the
    command line (`python -m sim.serving.service --run-id ... --store ...`, its own process), the
    others by uvicorn in a thread of this process."""
    from sim.adapters import tracking
    from sim.serving.service import Scorer, create_app
    from sim.serving.store import open_store
    uri = runs["uri"]
    groups = list(test_impressions.groupby(["user_id", "ts"]))
    for expid, (run_id, model_uri) in runs["runs"].items():
        logged = pd.read_parquet(tracking.download_artifact(run_id, "test_predictions.parquet", uri))
        assert set(logged.impression_id) == set(test_impressions.impression_id)
        logged = logged.set_index("impression_id").score
        if expid == "sim_hard":
            port = free_port()
            proc = subprocess.Popen([sys.executable, "-m", "sim.serving.service", "--run-id", run_id,
                                     "--tracking-uri", uri, "--store", served_store, "--port", str(port),
                                     "--threads", "1"], cwd=ROOT, env=subprocess_env(), stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
            try:
                wait_for_port(port, proc)
                served = _score_all(f"http://127.0.0.1:{port}", groups)
            finally:
                proc.terminate()
                proc.wait(timeout=30)
        else:
            scorer = Scorer(tracking.load_scoring_model(model_uri, uri), open_store(served_store), model_uri)
            with ThreadServer(create_app(scorer), free_port()) as server:
                served = _score_all(server.url, groups)
        diff = {i: abs(s - logged[i]) for i, s in served.items()}
        worst = max(diff, key=diff.get)
        assert diff[worst] < 1e-5, f"{expid}: impression {worst} served {served[worst]}, logged {logged[worst]}"
        assert len(served) == len(logged)


def _score_all(url: str, groups) -> dict[int, float]:
    out = {}
    for (user, ts), g in groups:
        status, body = post(f"{url}/score", {"user_id": int(user), "ts": int(ts), "candidates": [
            {"item_id": int(i), "category_id": int(k)} for i, k in zip(g.item_id, g.category_id)]})
        assert status == 200, body
        assert body["snapshot_date"] == SNAPSHOT and body["stale"] is False
        out.update({int(i): s for i, s in zip(g.impression_id, body["scores"])})
    return out


@pytest.mark.slow  # the tiny pipeline (Spark) and three trainings
def test_the_service_answers_faults_clearly(exported, runs, tmp_path):
    """400 names the bad field; a stale snapshot is served and says its date; a request older than every
    snapshot is refused (409); a missing store or one without a snapshot is a 503 naming it; an
    appended behavior reaches the next request."""
    from sim.adapters import tracking
    from sim.serving.service import Scorer, create_app
    from sim.serving.store import SqliteStore
    _, model_uri = runs["runs"]["sim_hard_time"]
    model = tracking.load_scoring_model(model_uri, runs["uri"])
    copy = tmp_path / "ubt.sqlite"  # the append below must not reach the other tests' store
    with sqlite3.connect(exported) as src, sqlite3.connect(copy) as dst:
        src.backup(dst)
    ts = 1_719_800_000  # 2024-07-01 02:13 UTC
    cand = [{"item_id": 5, "category_id": 3}]
    with ThreadServer(create_app(Scorer(model, SqliteStore(copy), model_uri)), free_port()) as s:
        status, body = post(f"{s.url}/score", {"user_id": 1, "ts": ts, "candidates": [{"item_id": -4, "category_id": 3}]})
        assert status == 400 and body["field"] == "candidates.0.item_id", body
        status, body = post(f"{s.url}/score", {"user_id": 1, "ts": ts})
        assert status == 400 and body["field"] == "candidates", body
        status, body = post(f"{s.url}/score", {"user_id": "x", "ts": ts, "candidates": cand})
        assert status == 400 and body["field"] == "user_id", body
        status, body = post(f"{s.url}/score", {"user_id": 1, "ts": ts + 2 * 86400, "candidates": cand})
        assert status == 200 and body["snapshot_date"] == SNAPSHOT and body["stale"] is True, body
        status, body = post(f"{s.url}/score", {"user_id": 1, "ts": ts - 86400, "candidates": cand})
        assert status == 409 and "UBT(2024-06-29)" in body["error"], body
        # The append path: a behavior of the candidate's category before t changes the score.
        before = post(f"{s.url}/score", {"user_id": 1, "ts": ts + 3600, "candidates": cand})[1]["scores"]
        status, body = post(f"{s.url}/behaviors", {"user_id": 1, "behaviors": [
            {"ts": ts + 60, "item_id": 5, "category_id": 3}]})
        assert status == 200 and body["appended"] == 1
        after = post(f"{s.url}/score", {"user_id": 1, "ts": ts + 3600, "candidates": cand})[1]["scores"]
        assert after != before
        for f in tmp_path.glob("ubt.sqlite*"):  # the store goes away under the running service
            f.unlink()
        status, body = post(f"{s.url}/score", {"user_id": 1, "ts": ts, "candidates": cand})
        assert status == 503 and str(copy) in body["error"] and "does not exist" in body["error"], body
    missing = tmp_path / "nowhere" / "ubt.sqlite"
    empty = tmp_path / "empty.sqlite"
    SqliteStore(empty, create=True)
    for path, says in ((missing, "does not exist"), (empty, "holds no snapshot")):
        with ThreadServer(create_app(Scorer(model, SqliteStore(path), model_uri)), free_port()) as s:
            status, body = post(f"{s.url}/score", {"user_id": 1, "ts": ts, "candidates": cand})
            assert status == 503 and str(path) in body["error"] and says in body["error"], body


@pytest.mark.slow  # the tiny pipeline (Spark), the trainings, and the export's own Spark process
def test_serve_demo_scores_the_test_day_and_stops_what_it_started(tiny_pipeline, runs, test_impressions):
    """`make serve-demo`'s command on the tiny pipeline and the sim_hard run of these tests: it exports,
    starts a redis-server and the service, prints the consistency (every test impression, within 1e-5
    of the logged score) and the latency table, and leaves neither server running."""
    from helpers.tiny_data import TINY_PIPELINE
    proc = subprocess.run([sys.executable, "-m", "sim.local.serve_demo", "--lakehouse", str(tiny_pipeline.full),
                           "--tracking-uri", runs["uri"], "--experiment", "serving", "--model", "sim_hard",
                           "--test-date", TEST_DATE, "--store", "redis", *[a for o in TINY_PIPELINE for a in ("--set", o)]],
                          cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=900)
    out = proc.stdout
    assert proc.returncode == 0 and "SERVE_DEMO_OK" in out, out[-4000:] + proc.stderr[-4000:]
    n = len(test_impressions)
    m = re.search(r"consistency \(sim_hard, store redis\): ([\d,]+) impressions .* max \|served - logged\| = (\S+)", out)
    assert m and int(m.group(1).replace(",", "")) == n and float(m.group(2)) < 1e-5, out
    assert re.search(r"^\s*sim_hard\s+redis\s+1\s+\d+\s+[\d.]+\s+[\d.]+", out, re.M), out  # the latency table
    ports = [int(p) for p in re.findall(r"(?:redis|http)://127\.0\.0\.1:(\d+)", out)]
    assert len(set(ports)) == 2, out
    for port in set(ports):
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()


def test_a_redis_store_down_is_a_503_naming_it(tmp_path):
    """The service on a Redis store (a real redis-server of its own) answers, and takes appended
    behaviors (POST /behaviors) into the next score; with the server stopped
    under it, /score and /health are 503 naming the store and saying it cannot be reached; once a new
    server answers, the service answers again (503 "holds no snapshot": the data was in memory)."""
    from sim.local.redis_server import RedisServer
    from sim.models.registry import compose
    from sim.serving.service import Scorer, create_app
    from sim.serving.store import CategoryRecord, UserRecord, open_store
    settings = {"windows.mode": "time", "windows.long_days": 14, "windows.short_days": 3, "caps.short_cap": 5,
                "caps.hard_k": 4, "caps.long_cap": 8, "time_gap_buckets": 16, "time_gap_per_octave": 1}
    model = compose("din", "sim_hard", {"emb_dim": 4, "item_buckets": 101, "category_buckets": 11,
                                        "mlp_dims": [8]}, name="sim_hard")
    ts = 1_719_800_000  # 2024-07-01
    cand = [{"item_id": 5, "category_id": 3}]
    server = RedisServer(tmp_path / "redis").start()
    try:
        store = open_store(server.url)
        w = store.new_snapshot(SNAPSHOT, {"settings": settings})
        w.put_users([(1, UserRecord(np.array([ts - 9000]), np.array([5]), np.array([3]), 1, np.zeros(0, np.int64)))])
        w.put_categories([(1, 3, CategoryRecord(np.array([ts - 9000]), np.array([5]), ts - 9000))])
        w.switch()
        with ThreadServer(create_app(Scorer(model, store, "m")), free_port()) as s:
            status, body = post(f"{s.url}/score", {"user_id": 1, "ts": ts, "candidates": cand})
            assert status == 200 and body["snapshot_date"] == SNAPSHOT, body
            # The append path on Redis: a behavior of the candidate's category before t changes the score.
            status, added = post(f"{s.url}/behaviors", {"user_id": 1, "behaviors": [
                {"ts": ts - 60, "item_id": 7, "category_id": 3}]})
            assert status == 200 and added["appended"] == 1, added
            after = post(f"{s.url}/score", {"user_id": 1, "ts": ts, "candidates": cand})[1]
            assert after["scores"] != body["scores"], (body, after)
            server.stop()
            status, body = post(f"{s.url}/score", {"user_id": 1, "ts": ts, "candidates": cand})
            assert status == 503 and body["store"] == store.name, body
            assert f"127.0.0.1:{server.port}" in body["error"] and "cannot be reached" in body["error"], body
            code, health = get(f"{s.url}/health")
            assert code == 503 and "cannot be reached" in health["error"], health
            server.start()
            status, body = post(f"{s.url}/score", {"user_id": 1, "ts": ts, "candidates": cand})
            assert status == 503 and "holds no snapshot" in body["error"], body
    finally:
        server.stop()


def test_an_unknown_store_scheme_fails_fast_saying_what_to_give(tmp_path):
    from sim.config import ConfigError
    from sim.serving.store import SqliteStore, open_store
    with pytest.raises(ConfigError, match=r"unknown scheme 'memcached'.* file path .* redis://HOST:PORT/DB"):
        open_store("memcached://127.0.0.1:11211")
    assert isinstance(open_store(tmp_path / "s.sqlite", create=True), SqliteStore)
    proc = subprocess.run([sys.executable, "-m", "sim.serving.service", "--store", "memcached://x:1",
                           "--model-uri", "models:/none"], cwd=ROOT, env=subprocess_env(), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and "unknown scheme 'memcached'" in proc.stderr, proc.stderr


@pytest.mark.slow  # the tiny pipeline (Spark) and three trainings
def test_a_snapshot_exported_with_other_samples_settings_than_the_model_was_trained_on_is_refused(
        spark, tiny_pipeline, exported, runs, tmp_path, capfd):
    """The runs trained on the tiny samples; the other tests' store holds UBT(06-30) exported with the same
    settings: accepted. Exported with caps.hard_k=3 (the tiny pipeline's is 10), the service does not
    start (exit 2, naming the key, both values and the re-export); a running service whose store switches
    to such a snapshot answers 503 naming the key."""
    from sim.adapters import tracking
    from sim.config import load_pipeline_conf
    from sim.samples.contract import SampleSpec
    from sim.serving.export import export_ubt
    from sim.serving.service import Scorer, create_app, main
    from sim.serving.store import SqliteStore
    from sim.serving.trained import check_snapshot, trained_on
    from helpers.tiny_data import TINY_PIPELINE
    uri = runs["uri"]
    run_id, model_uri = runs["runs"]["sim_hard"]
    trained = trained_on(tracking.model_run_id(model_uri, uri), uri)
    assert trained.settings == SampleSpec.from_conf(load_pipeline_conf(overrides=TINY_PIPELINE)).settings
    assert f"of {tiny_pipeline.full / 'samples'} (run {run_id})" in trained.source, trained.source
    served = SqliteStore(exported).current()
    check_snapshot(trained, served.meta["settings"], f"UBT({served.date})", "store")  # the same: accepted

    other = tmp_path / "ubt.sqlite"
    with sqlite3.connect(exported) as src, sqlite3.connect(other) as dst:
        src.backup(dst)
    model = tracking.load_scoring_model(model_uri, uri)
    ts, cand = 1_719_800_000, [{"item_id": 5, "category_id": 3}]  # 2024-07-01 02:13 UTC
    with ThreadServer(create_app(Scorer(model, SqliteStore(other), model_uri, trained)), free_port()) as s:
        assert post(f"{s.url}/score", {"user_id": 1, "ts": ts, "candidates": cand})[0] == 200
        spec = SampleSpec.from_conf(load_pipeline_conf(overrides=[*TINY_PIPELINE, "caps.hard_k=3"]))
        export_ubt(spark, str(tiny_pipeline.full), SNAPSHOT, spec, SqliteStore(other))  # switched in
        status, body = post(f"{s.url}/score", {"user_id": 1, "ts": ts, "candidates": cand})
        assert status == 503 and "caps.hard_k: trained on 10, snapshot 3" in body["error"], body
    capfd.readouterr()
    rc = main(["--model-uri", model_uri, "--tracking-uri", uri, "--store", str(other), "--port", str(free_port())])
    assert rc == 2
    error = capfd.readouterr().err  # the service's log
    assert f"the sqlite store {other} serves UBT({SNAPSHOT}) exported with other samples settings" in error, error
    assert "caps.hard_k: trained on 10, snapshot 3" in error and "--set caps.hard_k=10" in error, error


@pytest.mark.slow  # the tiny pipeline's logs, a count-mode UBT and samples (Spark)
def test_count_mode_request_rows_equal_the_samples_jobs_rows(spark, tiny_pipeline, tmp_path):
    """Count windows on the nightly path (short = the newest 5 behaviors, long = the 20 before them, hard
    = the long part's of the candidate category): on the tiny pipeline's logs, UBT(06-29) (full build),
    UBT(06-30) and samples(07-01) in count mode, UBT(06-30) exported and the behaviors of 07-01 appended:
    each impression of 07-01 rebuilt from the store is exactly its samples row."""
    from helpers.tiny_data import TINY_D0, TINY_PIPELINE
    from conftest import copy_lakehouse
    from sim.adapters.delta_io import read_table
    from sim.config import load_pipeline_conf
    from sim.formats.packing import unpack_frame
    from sim.samples.contract import SampleSpec
    from sim.samples.job import build_samples
    from sim.serving.export import append_day, export_ubt
    from sim.serving.store import SqliteStore
    from sim.ubt.job import build_ubt
    lake = copy_lakehouse(tiny_pipeline.full, tmp_path / "lake", ("behaviors", "impressions"))
    cfg = load_pipeline_conf(overrides=[*TINY_PIPELINE, "windows.mode=count", "windows.short_count=5",
                                        "windows.long_count=20"])
    spec = SampleSpec.from_conf(cfg)
    build_ubt(spark, str(lake), SNAPSHOT, cfg.windows, cfg.caps, backfill_from=TINY_D0)
    assert build_samples(spark, str(lake), TEST_DATE, spec).action == "written"
    store = SqliteStore(tmp_path / "ubt.sqlite", create=True)
    export_ubt(spark, str(lake), SNAPSHOT, spec, store)
    assert append_day(spark, str(lake), TEST_DATE, store) > 0
    imp = unpack_frame(read_table(spark, str(lake / "samples")).where(f"dt = '{TEST_DATE}'").toPandas())
    assert not _rows_mismatches(store, imp.sort_values("impression_id"))
    # the count branch is exercised: full short windows, long parts, hard sequences from them
    assert (imp.short_len == 5).any() and (imp.long_len > 25).any() and (imp.hard_len > 0).any()


def test_a_run_that_logged_no_samples_is_refused_naming_the_way_out(tmp_path):
    """A model whose run logged no samples table (not trained by sim.train): what it was trained on cannot
    be checked, so the service refuses it, naming --no-settings-check."""
    from sim.adapters import tracking
    from sim.serving.trained import SettingsMismatch, trained_on
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with tracking.run("elsewhere", run_name="untrained", uri=uri) as run_id:
        tracking.log_params({"model": {"name": "din"}})
    with pytest.raises(SettingsMismatch, match=f"run {run_id} logged no samples table .*--no-settings-check"):
        trained_on(run_id, uri)
