"""A local cluster on 127.0.0.1, each piece a real server in its own process group: the S3 server
(s3proxy, :mod:`sim.local.s3server`), a Spark standalone master and its workers, and an MLflow tracking server
(SQLite backend store, artifacts on the S3 server). The tests' fixtures and ``make cluster-demo``
(:mod:`sim.local.cluster_demo`) start them through :class:`LocalCluster`, which stops everything it started
when its block ends, also when a step inside failed.

Each service runs in a new session (``start_new_session``), so stopping it signals its whole process
group: a Spark worker goes with the executor JVMs it launched, ``mlflow server`` with its gunicorn or
uvicorn workers. Stopping is SIGTERM, a grace period, then SIGKILL of what is left.

The endpoint and credentials of the S3 server reach the clients as the standard ``AWS_*`` variables
(:attr:`LocalCluster.client_env`); the Spark workers get them in their environment (their executors
read the lakehouse through S3A with them), the MLflow server as ``AWS_*`` plus ``MLFLOW_S3_ENDPOINT_URL``
(boto3, which its S3 artifact store uses).
"""
from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

from sim.config import PROJECT_ROOT

# JVMs that live minutes on small data: the C1 JIT alone halves their CPU time on two cores.
SHORT_JVM_OPTS = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spark_home() -> Path:
    import pyspark
    return Path(pyspark.__file__).parent


def java() -> str:
    home = os.environ.get("JAVA_HOME")
    return os.path.join(home, "bin", "java") if home else "java"


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:  # a reused id of someone else's group: not ours any more
        return False


def stop_group(proc: subprocess.Popen, grace: float = 20) -> None:
    """SIGTERM, then SIGKILL, to the process group ``proc`` leads (started with ``start_new_session``);
    returns when the leader is reaped and the group is gone (or was killed)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + grace
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            continue
        while time.monotonic() < deadline and group_alive(proc.pid):
            time.sleep(0.2)
        if not group_alive(proc.pid):
            break
    if proc.returncode is None:
        proc.wait()


def http_answers(url: str, ok_only: bool = False) -> bool:
    """Whether ``url`` answers HTTP (with ``ok_only``: with 200). s3proxy answers an unsigned request
    with 403, which counts as up."""
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status == 200 or not ok_only
    except urllib.error.HTTPError:
        return not ok_only
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return False


@dataclass
class Service:
    name: str
    proc: subprocess.Popen
    log: Path
    url: str = ""


@dataclass
class LocalCluster:
    """Servers on 127.0.0.1 under ``work`` (their data and logs). Use as a context manager; call the
    ``start_*`` methods inside. ``env``: the environment the services start from (default: this
    process's), with this venv's Python for the executors and the project on ``PYTHONPATH``."""
    work: Path
    env: Mapping[str, str] | None = None
    bucket: str = "lake"
    access_key: str = field(default_factory=lambda: "local-" + secrets.token_hex(4))
    secret_key: str = field(default_factory=lambda: secrets.token_hex(16))
    services: list[Service] = field(default_factory=list)
    s3_endpoint: str = ""
    spark_master: str = ""
    tracking_uri: str = ""

    def __post_init__(self) -> None:
        self.work = Path(self.work).resolve()
        self.work.mkdir(parents=True, exist_ok=True)

    def __enter__(self) -> "LocalCluster":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # ----------------------------------------------------------------------------------- environment
    @property
    def client_env(self) -> dict[str, str]:
        """The ``AWS_*`` variables every reader of the S3 server takes (empty before :meth:`start_s3`)."""
        if not self.s3_endpoint:
            return {}
        return {"AWS_ENDPOINT_URL": self.s3_endpoint, "AWS_ACCESS_KEY_ID": self.access_key,
                "AWS_SECRET_ACCESS_KEY": self.secret_key, "AWS_REGION": "us-east-1",
                "AWS_DEFAULT_REGION": "us-east-1", "AWS_ALLOW_HTTP": "true"}

    def base_env(self, **extra: str) -> dict[str, str]:
        """The services' and the demo's subprocesses' environment: this venv's Python for PySpark and
        its ``bin`` on PATH, the project on PYTHONPATH, the S3 server's ``AWS_*`` variables."""
        env = dict(os.environ if self.env is None else self.env)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH")) if p)
        env["PYSPARK_PYTHON"] = env["PYSPARK_DRIVER_PYTHON"] = sys.executable
        env["SPARK_HOME"] = str(spark_home())
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        env.pop("SIM_SPARK_MASTER", None)
        env.update(self.client_env)
        env.update(extra)
        return env

    # ------------------------------------------------------------------------------------- processes
    def start_service(self, name: str, cmd: Sequence[str], ready: Callable[[], bool], timeout: float,
                      env: Mapping[str, str], cwd: Path | str | None = None, url: str = "") -> Service:
        """Run ``cmd`` in its own process group, its output in ``work/<name>.log``, until ``ready()``;
        fails with the log's tail if it exits first or is not ready within ``timeout`` seconds. It is
        stopped with the others (:meth:`stop`), also when it never got ready."""
        log_path = self.work / f"{name}.log"
        with open(log_path, "w") as log:
            proc = subprocess.Popen(list(cmd), stdout=log, stderr=subprocess.STDOUT, env=dict(env),
                                    cwd=cwd or self.work, start_new_session=True)
        service = Service(name, proc, log_path, url)
        self.services.append(service)  # stopped by stop() even if it never gets ready
        deadline = time.monotonic() + timeout
        while not ready():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited {proc.returncode} while starting; its log "
                                   f"({log_path}):\n{log_path.read_text()[-4000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} was not ready within {timeout:.0f} s; its log ({log_path}):\n"
                                   f"{log_path.read_text()[-4000:]}")
            time.sleep(0.5)
        return service

    def service(self, name: str) -> Service:
        (s,) = [s for s in self.services if s.name == name]
        return s

    def stop_service(self, name: str, kill: bool = False) -> None:
        """Stop one service (``kill``: SIGKILL to its group at once, as a lost machine) and forget it."""
        s = self.service(name)
        if kill:
            try:
                os.killpg(s.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        stop_group(s.proc)
        self.services.remove(s)

    def stop(self) -> None:
        """Stop every service, the last started first; each one is stopped even if another fails to."""
        errors = []
        while self.services:
            s = self.services.pop()
            try:
                stop_group(s.proc)
            except Exception as e:  # noqa: BLE001 - keep stopping the others
                errors.append(f"{s.name}: {e}")
        if errors:
            raise RuntimeError("could not stop: " + "; ".join(errors))

    def pids(self) -> list[int]:
        return [s.proc.pid for s in self.services]

    # -------------------------------------------------------------------------------------- services
    def start_s3(self, port: int | None = None, timeout: float = 120) -> str:
        """s3proxy over ``work/s3`` with :attr:`bucket` created; its endpoint. Called again after
        ``stop_service("s3")`` it restarts on the same port and directory (the same objects)."""
        from sim.local import s3server
        if not self.s3_endpoint:
            self.s3_endpoint = f"http://127.0.0.1:{port or free_port()}"
        port = int(self.s3_endpoint.rsplit(":", 1)[1])
        props = s3server.prepare(self.work / "s3", port, self.access_key, self.secret_key, [self.bucket])
        cmd = s3server.command(props, java=java(), jvm_opts=SHORT_JVM_OPTS.split())
        self.start_service("s3", cmd, lambda: http_answers(self.s3_endpoint + "/"), timeout, self.base_env(),
                    url=self.s3_endpoint)
        return self.s3_endpoint

    @property
    def s3_root(self) -> Path:
        """The directory that holds the buckets (s3proxy's filesystem backend)."""
        return self.work / "s3"

    def start_spark(self, workers: int = 2, cores: int = 1, memory: str = "1536m",
                    timeout: float = 180) -> str:
        """A Spark standalone master and ``workers`` workers of ``cores`` cores (separate JVMs, as on
        separate machines); the master URL. The workers' environment carries the ``AWS_*`` variables:
        their executors read and write the lakehouse through S3A with them."""
        port = free_port()
        self.spark_master = f"spark://127.0.0.1:{port}"
        master = self.start_service("spark-master", [
            str(spark_home() / "bin" / "spark-class"), "org.apache.spark.deploy.master.Master", "--host",
            "127.0.0.1", "--port", str(port), "--webui-port", str(free_port())],
            lambda: "I have been elected leader" in (self.work / "spark-master.log").read_text(), timeout,
            self._spark_env(), url=self.spark_master)
        for i in range(workers):  # started together, then waited for together
            self._start_worker(i, cores, memory, lambda: True, timeout)
        registered = lambda: master.log.read_text().count("Registering worker") >= workers  # noqa: E731
        deadline = time.monotonic() + timeout
        while not registered():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{workers} Spark workers did not register within {timeout:.0f} s; "
                                   f"see {self.work}/spark-worker-*.log")
            for s in self.services:
                if s.proc.poll() is not None:
                    raise RuntimeError(f"{s.name} exited {s.proc.returncode}:\n{s.log.read_text()[-4000:]}")
            time.sleep(0.5)
        return self.spark_master

    def start_worker(self, i: int, cores: int = 1, memory: str = "1536m", timeout: float = 120) -> None:
        """(Re)start worker ``i`` of :meth:`start_spark`'s master, e.g. after a fault test killed it."""
        master_log = self.service("spark-master").log
        before = master_log.read_text().count("Registering worker")
        self._start_worker(i, cores, memory, lambda: master_log.read_text().count("Registering worker") > before,
                           timeout)

    def _spark_env(self) -> dict[str, str]:
        return self.base_env(SPARK_LOCAL_IP="127.0.0.1", SPARK_LOG_DIR=str(self.work),
                             SPARK_WORKER_DIR=str(self.work), SPARK_DAEMON_JAVA_OPTS=SHORT_JVM_OPTS)

    def _start_worker(self, i: int, cores: int, memory: str, ready: Callable[[], bool], timeout: float) -> None:
        self.start_service(f"spark-worker-{i}", [
            str(spark_home() / "bin" / "spark-class"), "org.apache.spark.deploy.worker.Worker", self.spark_master,
            "--host", "127.0.0.1", "--cores", str(cores), "--memory", memory, "--webui-port", str(free_port()),
            "--work-dir", str(self.work / f"worker-{i}")], ready, timeout, self._spark_env())

    def start_mlflow(self, artifacts: str | None = None, timeout: float = 240) -> str:
        """``mlflow server``: SQLite backend store under ``work``, artifacts uploaded through the
        server to ``artifacts`` (default ``s3://<bucket>/mlflow`` once the S3 server runs, else a
        local directory), one worker; its http URL."""
        port = free_port()
        if artifacts is None:
            artifacts = f"s3://{self.bucket}/mlflow" if self.s3_endpoint else str(self.work / "mlartifacts")
        env = self.base_env()
        if self.s3_endpoint:
            env["MLFLOW_S3_ENDPOINT_URL"] = self.s3_endpoint  # boto3, which MLflow's S3 store uses
            # boto3 (botocore >= 1.36) sends a CRC32 checksum header with every upload by default, which
            # s3proxy 2.6 refuses ("Unknown header x-amz-checksum-crc32", 501): checksums only where an
            # operation requires them. AWS S3 itself needs no such setting.
            env.setdefault("AWS_REQUEST_CHECKSUM_CALCULATION", "when_required")
            env.setdefault("AWS_RESPONSE_CHECKSUM_VALIDATION", "when_required")
        url = f"http://127.0.0.1:{port}"
        cmd = [str(Path(sys.executable).parent / "mlflow"), "server",
               "--backend-store-uri", f"sqlite:///{self.work / 'mlflow.db'}",
               "--artifacts-destination", artifacts, "--host", "127.0.0.1", "--port", str(port),
               "--workers", "1"]
        self.start_service("mlflow", cmd, lambda: http_answers(url + "/health", ok_only=True), timeout, env, url=url)
        self.tracking_uri = url
        return url

    # --------------------------------------------------------------------------------------- clients
    def spark_submit(self, *args: str, driver_memory: str = "1g", executor_memory: str = "1g",
                     s3a: bool = True) -> list[str]:
        """A ``spark-submit --master <this cluster>`` command line with the cached Delta jars and (with
        ``s3a``) the S3A jars on the driver's and executors' class path (the executors run on this
        machine, so the same paths hold; on a real cluster the jars are installed on the nodes or passed
        with --jars). The AWS SDK bundle carries an slf4j 1 API ahead of Spark's on that class path,
        which silences the JVMs' logs: leave ``s3a`` off for a lakehouse on a shared file system."""
        from sim.adapters import jvm_archive
        from sim.adapters.spark import delta_jars, s3a_jars
        jars = delta_jars()
        if not jars:
            raise FileNotFoundError("the Delta jars are not cached: run `make setup`")
        s3a_path = os.pathsep.join(s3a_jars()) if s3a else ""
        # The driver's and the executors' class path is then the one of setup's class-data archive: they
        # map it (an executor started from it takes about a fifth less CPU on the demo's jobs).
        archive = jvm_archive.driver_options() if s3a_path else ""
        cmd = [str(spark_home() / "bin" / "spark-submit"), "--master", self.spark_master,
               "--jars", ",".join(jars), "--driver-memory", driver_memory, "--executor-memory", executor_memory,
               "--conf", "spark.ui.enabled=false",
               "--conf", f"spark.executor.extraJavaOptions={SHORT_JVM_OPTS} {archive}".rstrip()]
        if s3a_path:
            cmd += ["--driver-class-path", s3a_path, "--conf", f"spark.executor.extraClassPath={s3a_path}"]
        if archive:
            cmd += ["--driver-java-options", archive]
        return cmd + list(args)
