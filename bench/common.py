"""What more than one benchmark uses, in one module (no benchmark imports another): the checkout on
``sys.path`` (``ROOT``), resource sampling (:class:`Resources`), the synthetic nightly data
(:func:`generate`, its options :func:`data_args`, the impression date ``D``), spark-submit runs of the
jobs measured (:func:`submit`) and the loader's throughput (:func:`best_of`, :func:`loader_epoch`).

The data is synthetic and generated with Spark (deterministic hashes, no driver-side loops), so the
benchmarks do not depend on the generator's model: per-user history lengths are log-normal with a few
users at 54,000, spread over the 181 days ending on the impression date, each user's categories skewed
toward a handful of interests.
"""
from __future__ import annotations

import argparse
import os
import re
import resource
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the checkout's ``sim``, before any installed one

from sim.local.cluster import spark_home  # noqa: E402

D = "2024-07-03"  # the last day of a block of 7 days (blocks start on 1970-01-01 + 7k days)
LONG_DAYS = 180
QUICK_BEHAVIORS, QUICK_USERS = 1_000_000, 2_500


# ---------------------------------------------------------------------------------------- resources
class Resources:
    """Peak RSS (bytes) and CPU seconds of a process (default: this one) and its descendants while the
    block runs, sampled every ``interval`` seconds (CPU of a child that exits between two samples after
    its last one is not counted; the callers that need it exactly use getrusage)."""

    def __init__(self, pid: int | None = None, interval: float = 0.2):
        self.pid = os.getpid() if pid is None else pid
        self.interval, self.peak, self.cpu, self._stop = interval, 0, 0.0, threading.Event()
        self._cpu: dict[int, float] = {}

    def _sample(self) -> int:
        try:
            root = psutil.Process(self.pid)
            procs = [root] + root.children(recursive=True)
        except psutil.Error:  # the process has ended
            return 0
        total = 0
        for p in procs:
            try:
                total += p.memory_info().rss
                t = p.cpu_times()
                self._cpu[p.pid] = t.user + t.system
            except psutil.Error:
                pass
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._sample())
            self._stop.wait(self.interval)

    def __enter__(self) -> "Resources":
        self._sample()
        self._cpu0 = dict(self._cpu)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._sample())
        self.cpu = sum(v - self._cpu0.get(pid, 0.0) for pid, v in self._cpu.items())


# --------------------------------------------------------------------------------- spark-submit runs
def env() -> dict:
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join([str(ROOT), e.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    e["PYSPARK_PYTHON"] = e["PYSPARK_DRIVER_PYTHON"] = sys.executable
    e["SPARK_HOME"] = str(spark_home())
    return e


@dataclass
class Run:
    wall: float  # seconds
    cpu: float  # user + system seconds of spark-submit and everything it started (the JVM)
    peak: int  # bytes, peak RSS of the process tree
    out: str  # stdout

    @property
    def job(self) -> float:
        """In-job seconds (after the SparkSession exists) from the job's summary lines."""
        return sum(float(m) for m in re.findall(r"seconds=([0-9.]+)", self.out))


def submit(script: str, lakehouse: Path | str, *args: str, driver_memory: str, extra: list[str] = ()) -> Run:
    """Run a job with spark-submit (``extra``: more spark-submit options) and measure it."""
    from sim.adapters.spark import delta_jars
    jars = delta_jars()
    cmd = [str(spark_home() / "bin" / "spark-submit"), "--master", "local[2]",
           *(["--jars", ",".join(jars)] if jars else ["--packages", "io.delta:delta-spark_2.13:4.0.1"]),
           "--driver-memory", driver_memory, "--conf", "spark.ui.enabled=false", *extra,
           str(ROOT / "jobs" / script), "--lakehouse", str(lakehouse), *args]
    started = time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    with Resources(proc.pid) as res:
        out, err = proc.communicate()
    peak = res.peak
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{out[-2000:]}\n{err[-6000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return Run(wall, cpu, peak, out)


# ------------------------------------------------------------------------------------ synthetic data
def generate(spark, lakehouse: Path, n_behaviors: int, users: int, impressions_per_user: int,
             fixed_counts: list[tuple[int, int]] | None = None, categories: int = 1000) -> dict:
    """behaviors (181 days ending on D) and impressions (on D) Delta tables under ``lakehouse``.

    ``fixed_counts`` [(users, behaviors each)] replaces the log-normal history lengths.
    """
    from pyspark.sql import functions as F
    from sim.inputs.schema import BEHAVIORS, IMPRESSIONS
    from sim.ubt.dates import day_start, shift_date

    start = day_start(shift_date(D, -LONG_DAYS))
    span = (LONG_DAYS + 1) * 86400

    def u01(*cols):  # a deterministic uniform in [0, 1) from a hash of the columns
        return (F.xxhash64(*cols).bitwiseAND(F.lit((1 << 53) - 1)).cast("double") / float(1 << 53))

    if fixed_counts:
        rows, first = [], 1
        for n_users, n in fixed_counts:
            rows += [(u, n) for u in range(first, first + n_users)]
            first += n_users
        profiles = spark.createDataFrame(rows, "user_id long, n long")
    else:
        mean, sigma = n_behaviors / users, 1.5
        mu = float(__import__("math").log(mean) - sigma * sigma / 2)
        z = F.sqrt(-2 * F.log(u01(F.lit(1), F.col("id")) + F.lit(1e-12))) * F.cos(
            2 * 3.141592653589793 * u01(F.lit(2), F.col("id")))
        profiles = spark.range(1, users + 1).select(
            F.col("id").alias("user_id"),
            F.when(F.col("id") <= 2, F.lit(54000.0)).otherwise(F.exp(F.lit(mu) + F.lit(sigma) * z))
            .alias("raw"))
        total = profiles.agg(F.sum("raw")).first()[0]
        scale = n_behaviors / total
        profiles = profiles.select("user_id", F.least(F.lit(54000), F.greatest(
            F.lit(10), F.round(F.col("raw") * (F.when(F.col("user_id") <= 2, 1.0).otherwise(scale)))
        )).cast("long").alias("n"))
    profiles = profiles.repartition(max(2, min(64, n_behaviors // 500_000 + 2)), "user_id")
    b = profiles.select("user_id", F.explode(F.sequence(F.lit(1), F.col("n"))).alias("k"))
    slot = F.floor(F.pow(u01(F.lit(3), "user_id", "k"), F.lit(2.0)) * 20)
    cat = (F.abs(F.xxhash64(F.lit(4), "user_id", slot)) % categories + 1)
    ts = F.lit(start) + F.floor(u01(F.lit(5), "user_id", "k") * span).cast("long")
    b = b.select("user_id", (cat * 100000 + F.floor(F.pow(u01(F.lit(6), "user_id", "k"), F.lit(3.0)) * 5000)
                             .cast("long") + 1).alias("item_id"),
                 cat.cast("long").alias("category_id"),
                 F.when(u01(F.lit(7), "user_id", "k") < 0.9, "pv").otherwise("buy").alias("behavior_type"),
                 ts.alias("ts"))
    b = b.withColumn("dt", F.date_format(F.date_from_unix_date(F.floor(F.col("ts") / 86400).cast("int")),
                                         "yyyy-MM-dd"))
    b = b.select(*[F.col(f.name).cast(f.dataType) for f in BEHAVIORS.fields])
    (b.repartition("dt").write.format("delta").mode("overwrite").partitionBy("dt")
     .save(str(lakehouse / "behaviors")))
    d0 = day_start(D)
    i = profiles.select("user_id", F.explode(F.sequence(F.lit(1), F.lit(impressions_per_user))).alias("j"))
    islot = F.floor(F.pow(u01(F.lit(8), "user_id", "j"), F.lit(2.0)) * 20)
    icat = F.abs(F.xxhash64(F.lit(4), "user_id", islot)) % categories + 1
    i = i.select((F.col("user_id") * 1000 + F.col("j")).alias("impression_id"), "user_id",
                 (icat * 100000 + 1).alias("item_id"), icat.alias("category_id"),
                 (F.lit(d0) + F.floor(u01(F.lit(9), "user_id", "j") * 86400).cast("long")).alias("ts"),
                 (u01(F.lit(10), "user_id", "j") < 0.1).cast("int").alias("label"),
                 *[F.lit(None).cast("double").alias(p) for p in ("p_click", "p_click_short")],
                 F.lit(D).alias("dt"))
    i = i.select(*[F.col(f.name).cast(f.dataType) for f in IMPRESSIONS.fields])
    i.write.format("delta").mode("overwrite").partitionBy("dt").save(str(lakehouse / "impressions"))
    from sim.adapters.delta_io import read_table
    n = read_table(spark, str(lakehouse / "behaviors")).count()
    return {"behaviors": n, "users": profiles.count(),
            "impressions": read_table(spark, str(lakehouse / "impressions")).count(),
            "day_behaviors": read_table(spark, str(lakehouse / "behaviors")).where(f"dt = '{D}'").count()}


def data_args(description: str, work: str) -> argparse.ArgumentParser:
    """The options of the data :func:`generate` makes, shared by the benchmarks that use it."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--behaviors", type=int, default=20_000_000)
    p.add_argument("--users", type=int, default=50_000)
    p.add_argument("--impressions-per-user", type=int, default=4)
    p.add_argument("--work", default=work)
    p.add_argument("--driver-memory", default="6g")
    p.add_argument("--quick", action="store_true", help=f"small data: {QUICK_BEHAVIORS:,} behaviors of "
                   f"{QUICK_USERS:,} users (minutes, not the figures of docs/RESULTS.md)")
    return p


# ------------------------------------------------------------------------------------------- loader
def best_of(passes: int, fn) -> float:
    """The highest rows/s of ``passes`` runs of ``fn`` (which returns the rows it read)."""
    best = 0.0
    for _ in range(passes):
        start = time.perf_counter()
        rows = fn()
        best = max(best, rows / (time.perf_counter() - start))
    return best


def loader_epoch(files, workers: int, columns, batch: int, keep: list | None = None) -> int:
    from sim.formats.packing import SEQUENCES
    from sim.training.loader import ShardedLoader
    loader = ShardedLoader(files, columns, batch_size=batch, seed=1, trim=SEQUENCES, bucket_batches=16,
                           workers=workers)
    rows = 0
    for b in loader.epoch(0):
        rows += len(b["label"])
        if keep is not None and len(keep) < 40:
            keep.append(b)
    return rows
