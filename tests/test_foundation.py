"""Smoke tests of every component of the stack, each against the real thing: Delta on Spark,
spark-submit, a standalone Spark cluster, Petastorm over a Delta snapshot, horovodrun, MLflow."""
from __future__ import annotations


import numpy as np
import pytest

from conftest import hvd_script
from sim.adapters import delta_io


def test_delta_write_overwrite_read_time_travel(spark, tmp_path):
    path = str(tmp_path / "t")
    spark.range(5).write.format("delta").save(path)
    spark.range(10, 13).write.format("delta").mode("overwrite").save(path)
    assert sorted(r.id for r in delta_io.read_table(spark, path).collect()) == [10, 11, 12]
    assert sorted(r.id for r in delta_io.read_table(spark, path, version=0).collect()) == list(range(5))
    assert delta_io.latest_version(spark, path) == 1


def test_newest_version_and_commit_are_read_from_the_log_as_history_gives_them(spark, tmp_path):
    """latest_version and last_commit (read in the driver, no Spark job) give what Delta's history(1)
    gives, also after a commit of another writer (delta-rs) that this session's DeltaLog did not see."""
    from deltalake import write_deltalake
    from delta.tables import DeltaTable
    path = str(tmp_path / "t")
    spark.range(5).repartition(3).write.format("delta").save(path)
    spark.range(5, 8).write.format("delta").mode("append").save(path)
    spark.sql(f"OPTIMIZE delta.`{path}`")  # metrics other than a write's
    write_deltalake(path, delta_io.read_table(spark, path).limit(2).toPandas(), mode="append")
    head = DeltaTable.forPath(spark, path).history(1).select("version", "operation", "operationMetrics").first()
    assert head.version == 3 and delta_io.latest_version(spark, path) == 3
    assert delta_io.last_commit(spark, path) == delta_io.CommitInfo(3, head.operation, dict(head.operationMetrics))
    spark.sql(f"OPTIMIZE delta.`{path}`")
    head = DeltaTable.forPath(spark, path).history(1).select("version", "operation", "operationMetrics").first()
    assert head.operation == "OPTIMIZE" and int(head.operationMetrics["numRemovedFiles"]) > 1
    assert delta_io.last_commit(spark, path) == delta_io.CommitInfo(4, "OPTIMIZE", dict(head.operationMetrics))
    assert delta_io.latest_version(spark, str(tmp_path / "none")) is None


def test_job_commits_and_commit_ages_are_read_from_the_log_as_history_gives_them(spark, tmp_path):
    """job_commits and commit_age_days read each commit file in the driver, without a Spark job, and
    give what Delta's history() gives: the commits whose files the log still holds (after a checkpoint
    and log clean-up too), up to the version the session sees, with another writer's commit among them."""
    import datetime as dt
    import json
    import os
    from deltalake import write_deltalake
    from delta.tables import DeltaTable
    path = str(tmp_path / "t")
    for i in range(7):  # our jobs' JSON metadata, a free-text one, none
        w = spark.range(2).write.format("delta").mode("append")
        if i != 3:
            w = w.option("userMetadata", json.dumps({"job": "j" if i % 2 else "k", "date": f"d{i}"}) if i != 5 else "free text")
        w.save(path)
        if i == 0:
            spark.sql(f"ALTER TABLE delta.`{path}` SET TBLPROPERTIES (delta.checkpointInterval = 4)")
    write_deltalake(path, delta_io.read_table(spark, path).limit(1).toPandas(), mode="append")
    log_dir = os.path.join(path, "_delta_log")
    assert any(f.endswith(".checkpoint.parquet") for f in os.listdir(log_dir))
    os.remove(os.path.join(log_dir, f"{0:020d}.json"))  # what log clean-up does
    rows = DeltaTable.forPath(spark, path).history().collect()
    history = sorted((r.version, r.timestamp, r.userMetadata) for r in rows)
    assert [v for v, _, _ in history] == list(range(1, 9))
    sc = spark.sparkContext
    sc.setJobGroup("commits", "job_commits without a Spark job")
    try:
        commits = delta_io.job_commits(spark, path)
        ages = {v: delta_io.commit_age_days(spark, path, v) for v in range(9)}
        j_commits = delta_io.job_commits(spark, path, "j")
        operations = delta_io.operations_after(spark, path, 2)
    finally:
        sc.setJobGroup("", "")
    assert list(sc.statusTracker().getJobIdsForGroup("commits")) == []
    ours = [(v, json.loads(m)) for v, _, m in history if m and m.startswith("{")]
    assert [(c.version, c.metadata) for c in commits] == ours and len(ours) == 4
    assert [(c.version, c.job, c.date) for c in j_commits] == [(2, "j", "d1")]  # d3: no metadata
    now = dt.datetime.now()
    for v, ts, _ in history:
        assert ages[v] == pytest.approx((now - ts).total_seconds() / 86400, abs=60 / 86400)
    assert ages[0] == float("inf")  # its commit file is gone
    assert operations == sorted((r.version, r.operation) for r in rows if r.version > 2)
    assert operations[-1] == (8, "WRITE")  # the other writer's


def test_write_date_is_idempotent_and_findable(spark, tmp_path):
    path = str(tmp_path / "t")
    df = spark.createDataFrame([(1, "2024-01-01"), (2, "2024-01-01")], "id long, dt string")
    assert delta_io.write_date(df, path, job="j", date="2024-01-01")
    assert not delta_io.write_date(df, path, job="j", date="2024-01-01")  # same txn: skipped
    df2 = spark.createDataFrame([(3, "2024-01-02")], "id long, dt string")
    assert delta_io.write_date(df2, path, job="j", date="2024-01-02")
    assert delta_io.latest_version(spark, path) == 1
    assert delta_io.version_for_date(spark, path, "j", "2024-01-01") == 0
    # A forced re-run replaces exactly its date.
    df3 = spark.createDataFrame([(9, "2024-01-01")], "id long, dt string")
    assert delta_io.write_date(df3, path, job="j", date="2024-01-01", force=True)
    assert sorted(r.id for r in delta_io.read_table(spark, path).collect()) == [3, 9]
    assert delta_io.version_for_date(spark, path, "j", "2024-01-01") == 2


# spark-submit (--jars and --packages) is exercised by the real nightly jobs in test_nightly_jobs.py,
# the standalone cluster in test_cluster.py.


def test_petastorm_reads_exactly_the_delta_snapshot(spark, tmp_path):
    from sim.adapters import petastorm_io
    path = str(tmp_path / "snap")
    spark.range(0, 100).repartition(3).write.format("delta").save(path)
    spark.range(1000, 1050).repartition(2).write.format("delta").mode("overwrite").save(path)
    on_disk = [p for p in (tmp_path / "snap").glob("*.parquet")]
    assert len(on_disk) == 5  # the overwritten files are still there until VACUUM
    files = delta_io.snapshot_files(spark, path)
    assert sum(f.num_rows for f in files) == 50
    expected = sorted(r.id for r in delta_io.read_table(spark, path).collect())
    with petastorm_io.open_reader([f.path for f in files], ["id"]) as reader:
        got = sorted(int(i) for b in petastorm_io.iter_batches(reader, ["id"], 16) for i in b["id"])
    assert got == expected


def test_log_snapshot_listing_matches_spark_and_refuses_deletion_vectors(spark, tmp_path):
    path = str(tmp_path / "parts")
    df = spark.range(0, 90).selectExpr("id", "concat('2024-01-0', cast(id % 3 + 1 as string)) as dt")
    df.repartition(2).write.format("delta").partitionBy("dt").save(path)
    # Overwrite one date: its old files stay on disk but leave the snapshot.
    df.where("dt = '2024-01-02'").limit(7).write.format("delta").mode("overwrite") \
        .option("replaceWhere", "dt = '2024-01-02'").save(path)
    version, files, dates = delta_io.log_snapshot_files(path, "2024-01-02", "2024-01-03")
    assert version == delta_io.latest_version(spark, path) == 1
    assert dates == ["2024-01-01", "2024-01-02", "2024-01-03"]
    spark_files = delta_io.snapshot_files(spark, path, "dt >= '2024-01-02' AND dt <= '2024-01-03'")
    assert files == spark_files and sum(f.num_rows for f in files) == 7 + 30
    assert sum(f.num_rows for f in delta_io.log_snapshot_files(path, version=0)[1]) == 90  # time travel
    with pytest.raises(delta_io.MissingTableError, match="no Delta table"):
        delta_io.log_snapshot_files(str(tmp_path / "nothing"))
    dv = str(tmp_path / "dv")
    spark.range(0, 10).write.format("delta").option("delta.enableDeletionVectors", "true").save(dv)
    with pytest.raises(delta_io.MissingTableError, match="deletion vectors"):
        delta_io.log_snapshot_files(dv)


def test_petastorm_shards_are_disjoint_and_complete(spark, tmp_path):
    from sim.training.loader import ShardedLoader
    path = str(tmp_path / "shards")
    spark.range(0, 40).repartition(4).write.format("delta").save(path)
    files = [(f.path, f.num_rows) for f in delta_io.snapshot_files(spark, path)]
    seen = []
    for rank in range(2):
        loader = ShardedLoader(files, ["id"], rank=rank, size=2, batch_size=7, seed=1)
        seen.append([int(i) for b in loader.epoch(0) for i in b["id"]])
    assert len(seen[0]) == len(seen[1]) == 20
    assert not set(seen[0]) & set(seen[1])
    assert set(seen[0]) | set(seen[1]) == set(range(40))


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> dict:
    """One ``horovodrun -np 2`` of tests/helpers/hvd_two_ranks.py: the results of its parts, by name."""
    return hvd_script(2, "hvd_two_ranks.py", tmp_path_factory.mktemp("hvd") / "hvd.json")


@pytest.mark.slow
def test_horovodrun_two_ranks_allreduce_and_identical_weights(two_ranks):
    res = two_ranks["basics"]
    assert res["size"] == 2
    assert res["rank_sum"] == 3.0
    assert res["weights_changed"]
    assert res["max_weight_diff"] == 0.0


@pytest.mark.slow
def test_through_host_averaging_matches_horovods_distributed_optimizer(two_ranks):
    """``train.device``'s averaging of gradients through host memory (sim.training.device; the rest of
    it: test_device), on CPU tensors, against Horovod's own DistributedOptimizer."""
    res = two_ranks["through_host"]
    assert res["size"] == 2 and res["optimizer"] == "HostStagedSGD"
    assert res["moved"] > 0
    assert res["ranks_b"] == 0.0  # the ranks stay identical
    assert res["a_vs_b"] == 0.0  # the same averages as Horovod's own, to the bit


def test_mlflow_run_roundtrip(tmp_path):
    from sim.adapters import tracking
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    art = tmp_path / "note.txt"
    art.write_text("hello")
    with tracking.run("smoke", run_name="r1", uri=uri) as run_id:
        tracking.log_params({"model": {"name": "din", "emb_dim": 4}})
        for step, auc in enumerate([0.6, 0.7, 0.75]):
            tracking.log_metrics({"auc": auc}, step=step)
        tracking.log_artifact(art)
    runs = tracking.search_runs(["smoke"], uri=uri)
    assert list(runs.run_id) == [run_id]
    row = runs.iloc[0]
    assert row["params.model.name"] == "din" and row["status"] == "FINISHED"
    assert np.isclose(row["metrics.auc"], 0.75)
    assert [v for _, v in tracking.metric_history(run_id, "auc", uri=uri)] == [0.6, 0.7, 0.75]
    assert open(tracking.download_artifact(run_id, "note.txt", uri=uri)).read() == "hello"


def test_mlflow_failed_run_is_marked(tmp_path):
    from sim.adapters import tracking
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with pytest.raises(RuntimeError):
        with tracking.run("smoke", uri=uri):
            raise RuntimeError("boom")
    assert list(tracking.search_runs(["smoke"], uri=uri).status) == ["FAILED"]


def test_mlflow_params_are_plain_values_a_user_can_filter_on(tmp_path):
    """Config values reach MLflow as written in the YAML: ISO dates, comma-separated lists, no reprs."""
    import datetime as dt
    from sim.adapters import tracking
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with tracking.run("params", uri=uri):
        tracking.log_params({"test_dates": [dt.date(2024, 7, 1), dt.date(2024, 7, 2)],
                             "model": {"mlp_dims": [200, 80], "din_normalization": None},
                             "train": {"shuffle": True}})
    runs = tracking.search_runs(["params"], uri=uri,
                                filter_string="params.test_dates = '2024-07-01,2024-07-02'")
    assert len(runs) == 1
    row = runs.iloc[0]
    assert row["params.model.mlp_dims"] == "200,80" and row["params.train.shuffle"] == "true"
    assert row["params.model.din_normalization"] == ""


def test_forced_rewrite_after_checkpoint_and_log_cleanup_still_commits(spark, tmp_path):
    """The transaction id of a date may survive only in a checkpoint once log clean-up removed the JSON
    commit that wrote it: a forced rewrite must still get a newer transaction version and commit."""
    import os
    path = str(tmp_path / "t")
    day1 = spark.createDataFrame([(1, "2024-01-01")], "id long, dt string")
    assert delta_io.write_date(day1, path, job="j", date="2024-01-01")
    assert delta_io.write_date(day1, path, job="j", date="2024-01-01", force=True)  # txnVersion 1
    spark.sql(f"ALTER TABLE delta.`{path}` SET TBLPROPERTIES (delta.checkpointInterval = 2)")
    for d in ("2024-01-02", "2024-01-03", "2024-01-04"):
        delta_io.write_date(spark.createDataFrame([(2, d)], "id long, dt string"), path, job="j", date=d)
    log_dir = os.path.join(path, "_delta_log")
    checkpoints = sorted(int(f.split(".")[0]) for f in os.listdir(log_dir) if f.endswith(".checkpoint.parquet"))
    assert checkpoints, "no checkpoint written"
    for f in os.listdir(log_dir):  # what log clean-up does: commits before the checkpoint go
        if f.endswith(".json") and int(f.split(".")[0]) < checkpoints[-1]:
            os.remove(os.path.join(log_dir, f))
    day1_new = spark.createDataFrame([(7, "2024-01-01")], "id long, dt string")
    assert delta_io.write_date(day1_new, path, job="j", date="2024-01-01", force=True)
    assert [r.id for r in delta_io.read_table(spark, path).where("dt = '2024-01-01'").collect()] == [7]
