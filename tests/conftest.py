"""Shared fixtures: one Spark session with Delta (local[2]), the S3 and MLflow servers on 127.0.0.1,
and helpers to run spark-submit and horovodrun as real subprocesses."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from helpers.readme import SHORT_JVM_OPTS

# torch's OpenMP threads spin while waiting; on a shared two-core machine that starves Spark and the
# other ranks. Must be set before torch is first imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent


# `make test` runs the files on two pytest-xdist workers with --dist loadfile: a file stays on one worker
# and a worker takes the next file when it is free, so the run lasts at least as long as the start of
# the last file plus its duration. The files that take longest (the "seconds per test file" section
# the run prints at its end) go first, longest first; the others follow in collection order and fill in. xdist's own reordering (by number
# of tests per file) is turned off: it put the two-test test_nightly_jobs.py last.
SLOW_FILES_FIRST = ("test_cluster.py", "test_end_to_end.py", "test_nightly_jobs.py", "test_train.py",
                    "test_object_storage.py", "test_importers.py", "test_samples.py", "test_ubt.py", "test_foundation.py", "test_compare.py",
                    "test_serving.py", "test_own_logs.py", "test_nightly_command.py", "test_samples_join.py",
                    "test_generator.py")


def pytest_configure(config):
    if hasattr(config.option, "loadscopereorder"):  # pytest-xdist
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(SLOW_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a file keeps its order


FILE_SECONDS: dict[str, float] = {}


def pytest_runtest_logreport(report):
    # On the xdist controller too: each worker's reports carry their durations.
    name = report.nodeid.split("::", 1)[0]
    FILE_SECONDS[name] = FILE_SECONDS.get(name, 0.0) + report.duration


def pytest_terminal_summary(terminalreporter):
    """Seconds per test file (setup, call and teardown of its tests): the order SLOW_FILES_FIRST keeps."""
    slowest = sorted(FILE_SECONDS.items(), key=lambda kv: -kv[1])[:12]
    if slowest:
        terminalreporter.section("seconds per test file")
        for name, secs in slowest:
            terminalreporter.write_line(f"{secs:8.1f}s  {name}")


from sim.local.cluster import free_port, spark_home  # noqa: E402,F401 - the tests import them from here


def subprocess_env(**extra: str) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["PYSPARK_PYTHON"] = sys.executable
    env["PYSPARK_DRIVER_PYTHON"] = sys.executable
    env["SPARK_HOME"] = str(spark_home())
    env["PATH"] = os.pathsep.join([str(VENV_BIN), env.get("PATH", "")])
    env.pop("SIM_SPARK_MASTER", None)
    env.update(extra)
    return env


@pytest.fixture(scope="session")
def spark(tmp_path_factory):
    from helpers.tiny_data import SESSION_JVM_OPTS, TINY_SPARK
    from sim.adapters.spark import get_spark
    warehouse = tmp_path_factory.mktemp("warehouse")
    # The JIT options through the launcher's environment, read once as the JVM starts: asked for as
    # spark.driver.extraJavaOptions, every later get_spark of a job's code in this process would be
    # warned that its (other) value cannot apply.
    with pytest.MonkeyPatch.context() as env:
        env.setenv("SPARK_SUBMIT_OPTS", SESSION_JVM_OPTS)
        # One partition per shuffle and per local collection: the in-process tests' data is tiny, and a
        # second task per stage cost about 10 % more CPU over them. Tests of partition independence set
        # their own; the jobs' own JVMs (spark-submit, the cluster) run with 2 or more, and
        # test_nightly_jobs compares their rows with the tiny pipeline this session builds.
        s = get_spark("sim-tests", master="local[2]", conf={
            "spark.sql.shuffle.partitions": "1",
            "spark.default.parallelism": "1",
            "spark.sql.warehouse.dir": str(warehouse),
            "spark.driver.memory": "3g",
            **TINY_SPARK,
        })
    yield s
    s.stop()


@dataclass(frozen=True)
class TinyPipeline:
    """The tiny pipeline's lakehouses (read-only: copy a table before changing it)."""
    ubt_d0: Path  # the logs (behaviors, impressions, rejects, item_topics) and UBT(TINY_D0), full build
    full: Path  # the same logs, UBT(TINY_D0) and UBT(06-30) nightly, samples of both TINY_DATES


@pytest.fixture(scope="session")
def tiny_pipeline(spark, tmp_path_factory, request) -> TinyPipeline:
    """generate_logs -> build_ubt -> build_samples on ``helpers.tiny_data.TINY_PIPELINE``, the jobs'
    functions with the jobs' config, once per test run: the pytest-xdist workers share it (the first
    that needs it builds it under a file lock in their common temporary directory; the others wait
    and read it)."""
    from filelock import FileLock
    base = tmp_path_factory.getbasetemp()
    xdist_worker = hasattr(request.config, "workerinput")  # without xdist (or -n 0): this process alone
    root = (base.parent if xdist_worker else base) / "tiny-pipeline"
    out = TinyPipeline(ubt_d0=root / "ubt_d0" / "lakehouse", full=root / "full" / "lakehouse")
    root.mkdir(exist_ok=True)
    with FileLock(str(root) + ".lock"):
        if not (root / "done").exists():
            shutil.rmtree(root / "full", ignore_errors=True)
            shutil.rmtree(root / "ubt_d0", ignore_errors=True)
            run_tiny_pipeline(spark, str(out.full), after_d0=lambda: shutil.copytree(out.full, out.ubt_d0))
            (root / "done").touch()
    return out


def run_tiny_pipeline(spark, lakehouse: str, after_d0=None) -> None:
    """The tiny pipeline into ``lakehouse`` (a path or ``s3a://`` URI): the generator, UBT(TINY_D0) (full
    build; then ``after_d0()``), UBT(06-30) nightly, the samples of both impression days."""
    from helpers.tiny_data import TINY_D0, TINY_DATES, TINY_NOW, TINY_PIPELINE
    from sim.config import load_pipeline_conf
    from sim.inputs.ingest import run_generator
    from sim.samples.contract import SampleSpec
    from sim.samples.job import build_samples
    from sim.ubt.job import build_ubt
    cfg = load_pipeline_conf(overrides=TINY_PIPELINE)
    run_generator(spark, cfg.generator, lakehouse, max_reject_ratio=0.5, now_ts=TINY_NOW)
    for d in (TINY_D0, TINY_DATES[0]):
        build_ubt(spark, lakehouse, d, cfg.windows, cfg.caps, backfill_from=TINY_D0,
                  backfill_days=cfg.retention.backfill_days)
        if d == TINY_D0 and after_d0 is not None:
            after_d0()
    spec = SampleSpec.from_conf(cfg)
    for d in TINY_DATES:
        assert build_samples(spark, lakehouse, d, spec).action == "written"


def copy_lakehouse(src: Path, dst: Path, tables: tuple[str, ...] | None = None) -> Path:
    """A writable copy of (some tables of) a lakehouse."""
    for t in tables or sorted(p.name for p in src.iterdir() if p.is_dir()):
        shutil.copytree(src / t, dst / t)
    return dst


def spark_submit_cmd(*args: str, packages: bool = False) -> list[str]:
    """A spark-submit command line; with ``packages`` Delta comes from --packages (Maven Central)."""
    cmd = [str(spark_home() / "bin" / "spark-submit")]
    if packages:
        from sim.adapters.spark import DELTA_PACKAGE
        cmd += ["--packages", DELTA_PACKAGE]
    else:
        from sim.adapters.spark import delta_jars
        cmd += ["--jars", ",".join(delta_jars())]
    cmd += ["--conf", "spark.ui.enabled=false", "--driver-memory", "2g",
            "--conf", f"spark.executor.extraJavaOptions={SHORT_JVM_OPTS}"]
    return cmd + list(args)


def run(cmd: list[str], timeout: int = 900, check: bool = True, **env: str) -> subprocess.CompletedProcess:
    """``cmd`` in the checkout with :func:`subprocess_env`; a JVM it starts uses :data:`SHORT_JVM_OPTS`."""
    env.setdefault("SPARK_SUBMIT_OPTS", SHORT_JVM_OPTS)
    proc = subprocess.run(cmd, cwd=ROOT, env=subprocess_env(**env), capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}"
                             f"\n--- stderr\n{proc.stderr[-8000:]}")
    return proc


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory, s3_server):
    """An MLflow tracking server on 127.0.0.1 (``mlflow server``: SQLite backend store, artifacts
    uploaded through the server to ``s3://<bucket>/mlflow`` on the ``s3_server``, one worker), started
    by :class:`sim.local.cluster.LocalCluster`; yields its http URL and stops its process group in
    teardown."""
    from sim.local.cluster import LocalCluster
    with LocalCluster(tmp_path_factory.mktemp("mlflow-server"), env=subprocess_env(), bucket=s3_server.bucket,
                      access_key=s3_server.access_key, secret_key=s3_server.secret_key,
                      s3_endpoint=s3_server.endpoint) as cluster:
        yield cluster.start_mlflow(artifacts=f"s3://{s3_server.bucket}/{MLFLOW_PREFIX}")


MLFLOW_PREFIX = "mlflow"  # the key prefix of mlflow_server's artifacts in the s3_server's bucket


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """s3proxy on 127.0.0.1 at a free port, buckets in a temporary directory, one bucket (``lake``)
    created; yields a :class:`helpers.s3.S3Server` (endpoint, bucket, credentials). Stopped at the end of
    the session, also on failure."""
    from helpers.s3 import s3proxy
    with s3proxy(tmp_path_factory.mktemp("s3"), free_port()) as server:
        yield server


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """A real ``redis-server`` (the one ``make setup`` provides) on a free 127.0.0.1 port, its files in a
    temporary directory; a :class:`sim.local.redis_server.RedisServer` (``url``). Stopped at the end of
    the session, also on failure. Tests that share it use their own key prefix."""
    from sim.local.redis_server import RedisServer
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


def horovodrun_cmd(np: int, *args: str) -> list[str]:
    return [str(VENV_BIN / "horovodrun"), "-np", str(np), "-H", f"localhost:{np}", "--gloo",
            *args]


def hvd_script(np: int, script: str, out: Path, *args: str, timeout: int = 600) -> dict:
    """``tests/helpers/<script>`` under ``horovodrun -np np`` (Gloo timeout 300 s: a busy machine);
    the JSON its rank 0 writes to ``out`` (its last argument)."""
    import json
    run(horovodrun_cmd(np, "--gloo-timeout-seconds", "300", sys.executable, str(ROOT / "tests" / "helpers" / script),
                       *args, str(out)), timeout=timeout)
    return json.loads(out.read_text())


@pytest.fixture(autouse=True)
def torch_and_random_state():
    """Every test starts from the same random state and leaves torch's thread count as it found it.

    Why: tests of one pytest-xdist worker share a process. A benchmark or an in-process training sets
    torch's threads process-wide (``torch.set_num_threads`` in bench/ and sim.training.loop.setup), and
    a learning test's trajectory depends on the thread count (floating-point sums in another order) and
    on what earlier tests drew from the global generators; a test then passed alone and failed after
    another (tests/test_diagnostics.py's soft-search test, issue 26)."""
    import random

    import numpy as np
    import torch

    threads = torch.get_num_threads()
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def clean_dir(tmp_path):
    yield tmp_path
    shutil.rmtree(tmp_path, ignore_errors=True)
