"""The local cluster (``sim.local.cluster``): its services stop with their process groups; the demo flow of
``make cluster-demo`` on it; and two faults on a running cluster, each on small data:

- the S3 server stopped in the middle of a nightly job on an ``s3a://`` lakehouse: the job fails
  (exit 3) with a message naming the store, the table's last version is the one before, intact; with
  the server back, a re-run builds the date;
- a Spark worker killed (with the executor it runs: a lost machine) while its executor runs a task of
  a nightly job on the standalone cluster: the job finishes on the other worker, with the rows the
  same job gives in one process.

The flow (``sim.local.cluster_demo.run_flow``) runs on the module's cluster, with the MLflow server started
on it, on tiny data and one model: ``make cluster-demo`` is that flow on a cluster it starts and stops
(the stop is the first test's, the make target's recipe test_readme's).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import ROOT, run, subprocess_env
from helpers.events import FileEvents
from helpers.tiny_data import TINY_SPARK_SETS, tiny_logs
from sim.adapters.delta_io import job_commits, latest_version, read_table, version_for_date
from sim.local.cluster import SHORT_JVM_OPTS, LocalCluster
from test_ubt import rows_of

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

# Tiny demo data: 16 users, 18 days of history, impressions on the last 3 (train, validation, test).
TINY = tiny_logs(16, 18, 3, 4) + TINY_SPARK_SETS
# The flow's jobs on that data each take one executor of the cluster (a JVM start per executor is most of
# their work); its training takes one per rank. A job across both workers: the worker-kill test below.
ONE_EXECUTOR = ["spark.conf.spark.cores.max=1"]


# ------------------------------------------------------------------------- process groups, no servers
def test_services_stop_with_their_process_groups_also_when_a_start_fails(tmp_path):
    """A service's children go with it; a service that exits while starting fails the start, and
    leaving the block stops the services started before it."""
    with pytest.raises(RuntimeError, match="broken exited 3 while starting"):
        with LocalCluster(tmp_path) as c:
            c.start_service("sleeper", ["bash", "-c", "sleep 300 & sleep 300 & wait"], lambda: True, 10, os.environ)
            sleeper = c.service("sleeper").proc.pid
            time.sleep(0.5)
            children = [p for p in os.listdir("/proc") if p.isdigit() and _pgid(int(p)) == sleeper]
            assert len(children) == 3  # bash and its two sleeps, one group
            c.start_service("broken", ["bash", "-c", "exit 3"], lambda: False, 10, os.environ)
    with pytest.raises(ProcessLookupError):
        os.killpg(sleeper, 0)
    assert c.services == []


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


# ------------------------------------------------------------------------------------------- the flow
class ExecutorMaps:
    """While the block runs, every executor JVM of this machine (its pid) -> whether it was started with a
    class-data archive and whether its memory maps held that archive's file at some point of its life
    (read from /proc at every scan until they do: a JVM busy starting on a loaded machine may map it
    late; an executor lives as long as its application)."""

    def __init__(self, interval: float = 0.5):
        self.interval, self.seen, self._stop = interval, {}, threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> "ExecutorMaps":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _watch(self) -> None:
        while not self._stop.wait(self.interval):
            for pid in (p for p in os.listdir("/proc") if p.isdigit()):
                try:
                    if pid not in self.seen:
                        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                        if b"org.apache.spark.executor.CoarseGrainedExecutorBackend" not in cmd:
                            continue  # (read again next time: a worker's child execs the executor's JVM)
                        self.seen[pid] = (next((a.split(b"=", 1)[1].decode() for a in cmd
                                                if a.startswith(b"-XX:SharedArchiveFile=")), None), False)
                    archive, mapped = self.seen[pid]
                    if archive is not None and not mapped:  # the mapped file under its real path
                        self.seen[pid] = (archive, os.path.realpath(archive) in Path(f"/proc/{pid}/maps").read_text())
                except OSError:  # gone already
                    continue


def test_cluster_demo_flow_jobs_training_and_comparison_on_the_cluster(spark, cluster, tmp_path, capfd):
    """The demo's stages as ``make cluster-demo`` runs them: the jobs through spark-submit on the
    cluster on s3a://, the last night as one spark-submit of the nightly command (UBT, samples and the
    export into a serving store, in that driver's one application on the cluster), both Horovod ranks
    as Spark tasks reading the samples from S3 as s3:// with the AWS_* variables alone (identical final
    weights, every row of each split read once), the run and its artifacts on the tracking server
    (artifacts in the bucket), the comparison printed from the server."""
    import pandas as pd

    from sim.adapters import tracking
    from sim.local.cluster_demo import FEW_PARTITIONS, parse_args, run_flow, serving_store
    from sim.serving.store import SqliteStore
    from sim.training.metrics import auc
    cluster.start_mlflow()
    args = parse_args(["--models", "din", "--prefix", "flow", "--experiment", "cluster-flow"])
    with ExecutorMaps() as executors:
        times = run_flow(cluster, args, tmp_path, TINY + FEW_PARTITIONS + ONE_EXECUTOR,
                         env={"SPARK_SUBMIT_OPTS": SHORT_JVM_OPTS, "SIM_DUMP_WEIGHTS": str(tmp_path / "weights")})
    out = capfd.readouterr().out
    assert list(times) == ["generate", "ubt", "samples", "nightly", "train din", "compare"], out[-3000:]

    # The tables are objects of the bucket (s3proxy keeps them as files under its directory).
    store = cluster.s3_root / cluster.bucket / "flow" / "lakehouse"
    samples = read_table(spark, str(store / "samples"))
    n = samples.count()
    assert n > 0 and [c.date for c in job_commits(spark, str(store / "samples"), "build_samples")] == \
        sorted({r.dt for r in samples.select("dt").distinct().collect()})
    runs = tracking.search_runs(["cluster-flow"], uri=cluster.tracking_uri)
    # the training run, and the comparison sim.compare logged next to it
    assert sorted(runs["tags.mlflow.runName"]) == ["comparison", "din"], runs.filter(regex="status|runName").to_string()
    run = runs[runs["tags.mlflow.runName"] == "din"].iloc[0]
    assert run.status == "FINISHED" and run["params.horovod.size"] == "2" and run["params.model.name"] == "din"
    assert run["params.lakehouse"] == "s3://faults/flow/lakehouse"  # the readers' spelling of the jobs' s3a://
    assert run["params.data.samples_path"] == "s3a://faults/flow/lakehouse/samples"  # Spark's, in the log
    assert run["params.data.samples_version"] == str(latest_version(spark, str(store / "samples")))
    splits = [int(run[f"params.data.{s}_rows"]) for s in ("train", "valid", "test")]
    assert sum(splits) == n and min(splits) > 0
    # rank 0 logged the experiments file the stage named relative to the checkout (the ranks ran elsewhere)
    logged = tracking.download_artifact(run.run_id, "config/experiments.yaml", uri=cluster.tracking_uri)
    assert Path(logged).read_text() == (ROOT / "conf/experiments.yaml").read_text()
    pred = pd.read_parquet(tracking.download_artifact(run.run_id, "test_predictions.parquet", uri=cluster.tracking_uri))
    test_date = max(r.dt for r in samples.select("dt").distinct().collect())  # the plan's last day: test
    assert len(pred) == splits[2] and set(pred.impression_id) == {
        r.impression_id for r in samples.where(samples.dt == test_date).select("impression_id").collect()}
    assert run["metrics.auc"] == pytest.approx(auc(pred.label, pred.score), abs=1e-12)
    # the night of the test date: its stages in the spark-submit driver, one application of the cluster
    night = [line for line in out.splitlines() if line.startswith(f"nightly {test_date} ")]
    assert [line.split(":")[1].split()[0] for line in night] == ["off", "written", "written", "written"], night
    apps = re.findall(r"Registering app (\S+)", cluster.service("spark-master").log.read_text())
    assert apps.count("sim-pipeline-nightly") == 1, apps
    snapshot = SqliteStore(serving_store(tmp_path)).current()
    assert snapshot.date == test_date and snapshot.meta["ubt_version"] == version_for_date(
        spark, str(store / "ubt"), "build_ubt", test_date), snapshot
    assert list((cluster.s3_root / cluster.bucket / "mlflow").rglob("test_predictions.parquet"))
    import torch
    w0, w1 = (torch.load(tmp_path / "weights" / f"rank{i}.pt") for i in (0, 1))
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    # the comparison, from the server: din's test AUC, the one the run logged
    assert re.search(rf"din\s.*{float(run['metrics.auc']):.4f}", out), out[-3000:]
    # The jobs' executors (one at a time per spark-submit, on the class path of setup's class-data archive) map it.
    from sim.adapters.jvm_archive import archive_path
    mapped = [m for archive, m in executors.seen.values() if archive == str(archive_path())]
    assert len(mapped) >= 2 and all(mapped), executors.seen


# ---------------------------------------------------------------------------------------------- faults
# S3A gives up fast on a store that does not answer: one attempt of the SDK, one retry of S3A, short
# connection timeouts (the defaults retry for minutes).
FAIL_FAST = [f"spark.conf.spark.hadoop.fs.s3a.{k}={v}" for k, v in (
    ("attempts.maximum", 1), ("retry.limit", 1), ("retry.interval", "100ms"), ("retry.throttle.limit", 1),
    ("connection.establish.timeout", "2s"), ("connection.timeout", "5s"), ("connection.request.timeout", "10s"))]
D0, D1 = "2024-06-29", "2024-06-30"  # UBT(D0) built before the faults; the faulted nightly runs build D1


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """The S3 server (bucket ``faults``), a Spark master and two one-core workers."""
    with LocalCluster(tmp_path_factory.mktemp("faults"), env=subprocess_env(), bucket="faults") as c:
        c.start_s3()
        c.start_spark(workers=2)
        yield c


@pytest.fixture(scope="module")
def ubt_lake(tiny_pipeline) -> Path:
    """A local lakehouse with tiny logs and UBT(D0), built in the session's JVM (the session's tiny
    pipeline; read-only: the tests copy it)."""
    from helpers.tiny_data import TINY_D0
    assert TINY_D0 == D0
    return tiny_pipeline.ubt_d0


def job_cmd(script: str, lakehouse: str, *args: str) -> list[str]:
    cmd = [str(ROOT / "jobs" / script), "--lakehouse", lakehouse, *args]
    for s in TINY + FAIL_FAST:
        cmd += ["--set", s]
    return cmd


def test_s3_server_stopped_mid_job_fails_clearly_keeps_the_table_and_a_rerun_finishes(spark, cluster, ubt_lake):
    # The lakehouse on the S3 server: the local tables uploaded through the S3 API (objects with ETags,
    # which S3A's change detection checks); s3proxy keeps them as files under its directory, read
    # directly below while the server is down.
    # (boto3: one PUT per file; pyarrow's S3 writer uses multipart uploads, which stalled on s3proxy.)
    import boto3
    from botocore.config import Config
    client = boto3.client("s3", endpoint_url=cluster.s3_endpoint, aws_access_key_id=cluster.access_key,
                          aws_secret_access_key=cluster.secret_key, region_name="us-east-1",
                          config=Config(request_checksum_calculation="when_required",
                                        s3={"addressing_style": "path"}))
    for f in sorted(p for p in ubt_lake.rglob("*") if p.is_file()):
        client.put_object(Bucket=cluster.bucket, Key=f"lake/{f.relative_to(ubt_lake)}", Body=f.read_bytes())
    store = cluster.s3_root / cluster.bucket / "lake"
    lakehouse, ubt = f"s3a://{cluster.bucket}/lake", store / "ubt"
    v_prev = latest_version(spark, str(ubt))
    rows_prev = rows_of(read_table(spark, str(ubt)))

    out_path, err_path = cluster.work / "build_ubt.out", cluster.work / "build_ubt.err"
    # The kernel reports the first new data file the server stores (inotify): the write has begun.
    with FileEvents(ubt) as events, open(out_path, "w") as out_f, open(err_path, "w") as err_f:
        # files for the job's output: a full pipe would stall it
        # 32 write tasks: the first data file lands well before the commit, also on a busy machine (with one
        # or two, the job could commit before the server was stopped).
        wide = ["--set", "spark.conf.spark.sql.shuffle.partitions=32"]
        proc = subprocess.Popen([sys.executable, *job_cmd("build_ubt.py", lakehouse, "--date", D1), *wide], cwd=ROOT,
                                env=cluster.base_env(SPARK_SUBMIT_OPTS=SHORT_JVM_OPTS), stdout=out_f, stderr=err_f,
                                start_new_session=True)
        events.wait_for(lambda name: name.endswith(".parquet"), lambda: proc.poll() is None, 600)
    cluster.stop_service("s3", kill=True)  # the server dies while the job writes the date's files
    proc.wait(timeout=600)
    out, err = out_path.read_text(), err_path.read_text()
    assert proc.returncode == 3, f"exit {proc.returncode}\n{out[-2000:]}\n{err[-6000:]}"
    assert re.search(rf"the object store {re.escape(cluster.s3_endpoint)} failed at s3a://{cluster.bucket}/", err), err[-6000:]
    assert "re-run the job once the store answers" in err
    assert re.search(r"Connection refused|Unable to execute HTTP request|Connect to 127\.0\.0\.1", err), err[-6000:]
    # The table (read from the bucket's directory: the server is down) is at its last version, intact.
    assert latest_version(spark, str(ubt)) == v_prev
    assert rows_of(read_table(spark, str(ubt))) == rows_prev
    assert version_for_date(spark, str(ubt), "build_ubt", D1) is None

    # The re-run: a job's own JVM (`python jobs/...`, get_spark puts S3A on its class path) that reaches
    # the store with nothing but the AWS_* variables (endpoint derived from them, credentials read by S3A).
    cluster.start_s3()  # back on the same port, over the same directory
    from sim.config import load_pipeline_conf
    hadoop = {k for k in load_pipeline_conf(overrides=TINY + FAIL_FAST).spark.conf if k.startswith("spark.hadoop.")}
    assert hadoop == {s.split("=")[0].removeprefix("spark.conf.") for s in FAIL_FAST}  # retries and timeouts only
    proc = run([sys.executable, *job_cmd("build_ubt.py", lakehouse, "--date", D1)], timeout=600, **cluster.client_env)
    assert f"BUILD_UBT_OK date={D1}" in proc.stdout and f"{D1}:nightly" in proc.stdout, proc.stdout
    assert [c.date for c in job_commits(spark, str(ubt), "build_ubt")] == [D0, D1]
    assert latest_version(spark, str(ubt)) > v_prev


def _busy_executor(ui: str) -> str | None:
    """The id of an executor in the middle of a stage (a task running, after it finished two), from
    the driver's REST API; None while there is none (or the driver does not answer yet)."""
    import json
    import urllib.request
    try:
        with urllib.request.urlopen(ui + "/api/v1/applications", timeout=5) as r:
            (app,) = json.load(r)
        with urllib.request.urlopen(f"{ui}/api/v1/applications/{app['id']}/executors", timeout=5) as r:
            executors = json.load(r)
    except (OSError, ValueError):
        return None
    for e in executors:
        if e["id"] != "driver" and e["activeTasks"] > 0 and e["completedTasks"] >= 2:
            return e["id"]
    return None


def test_spark_worker_killed_mid_stage_the_job_finishes_with_the_same_rows(spark, cluster, ubt_lake, tiny_pipeline,
                                                                         tmp_path):
    from sim.local.cluster import free_port
    # The reference: the samples of D1 the session's tiny pipeline built in one process from these logs
    # and this UBT(D0) (ubt_lake is its copy at D0); the commits below show the same settings and inputs.
    reference = str(tiny_pipeline.full / "samples")
    faulted = tmp_path / "faulted"
    shutil.copytree(ubt_lake, faulted)

    # The driver's UI (its REST API) tells which executor runs a task; a local lakehouse, no S3A jars.
    port = free_port()
    cmd = cluster.spark_submit(*job_cmd("build_samples.py", str(faulted), "--date", D1, "--set",
                                        "spark.conf.spark.ui.enabled=true", "--set", f"spark.conf.spark.ui.port={port}"),
                               s3a=False)
    out_path, err_path = tmp_path / "job.out", tmp_path / "job.err"  # files: a full pipe would stall the job
    with open(out_path, "w") as out_f, open(err_path, "w") as err_f:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=cluster.base_env(SPARK_SUBMIT_OPTS=SHORT_JVM_OPTS),
                                stdout=out_f, stderr=err_f, start_new_session=True)
    killed = None
    deadline = time.monotonic() + 600
    while killed is None and time.monotonic() < deadline and proc.poll() is None:
        executor = _busy_executor(f"http://127.0.0.1:{port}")
        if executor is not None:
            # the worker that launched it (its work dir holds app-*/<executor id>/), with the executor
            (killed,) = [i for i in range(2) if list((cluster.work / f"worker-{i}").glob(f"app-*/{executor}"))]
            cluster.stop_service(f"spark-worker-{killed}", kill=True)
        time.sleep(0.1)
    proc.wait(timeout=900)
    out, err = out_path.read_text(), err_path.read_text()
    assert killed is not None, f"no worker was killed; job exit {proc.returncode}\n{err[-4000:]}"
    assert proc.returncode == 0, f"exit {proc.returncode}\n{out[-2000:]}\n{err[-6000:]}"
    assert f"date={D1} action=written" in out
    # Built with the settings and from the inputs (versions, data files) the reference was built with:
    # its commit's record of its run is the same.
    (ran,) = job_commits(spark, str(faulted / "samples"), "build_samples")
    (ref,) = [c for c in job_commits(spark, reference, "build_samples") if c.date == D1]
    assert ran.date == D1 and ran.metadata["fingerprint"] == ref.metadata["fingerprint"], (ran.metadata, ref.metadata)
    assert rows_of(read_table(spark, str(faulted / "samples"))) == rows_of(read_table(spark, reference).where(f"dt = '{D1}'"))
    # The killed worker stays down: this is the module's last test on its cluster (a test after it
    # would need `cluster.start_worker(killed)` here).
