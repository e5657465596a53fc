"""Benchmark of the nightly jobs (sim.ubt, sim.samples), all figures measured in one run.

1. UBT: the nightly update of one day against a full rebuild from 180 days of history, same data
   (target: nightly at least 5x faster). Two nights are measured: D-1, an ordinary night (the day's
   rows appended), and D, the last day of a 7-day block, which also rolls the block up; over a block
   six nights are ordinary and one rolls up.
2. Samples: job time per impression for users with ~50,000 behaviors against users with ~1,000, same
   UBT and same number of impressions per user (target: ratio at most 2; hard search reads only the
   candidate category's row, so it must not cost more as history grows).
3. End to end: the nightly run (build_ubt D, then build_samples D) at ``--behaviors`` behaviors on this
   machine, as spark-submit processes: wall time and peak memory (RSS of the process tree).

    .venv/bin/python bench/bench_nightly.py [--behaviors 20000000] [--users 50000] [--work DIR] [--quick]
    .venv/bin/python bench/bench_nightly.py --lakehouse s3a://BUCKET/PREFIX [--start-s3-server] \
        --behaviors 2000000 --users 5000     # local disk against the object store (bench/nightly_store.py)

The last line is JSON with every figure printed (seconds in job, wall and CPU of each job).

The data is synthetic and generated here with Spark (deterministic hashes, no driver-side loops), so
the benchmark does not depend on the generator's model: per-user history lengths are log-normal with
a few users at 54,000, spread over the 181 days ending on the impression date, each user's categories
skewed toward a handful of interests.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from measure import Resources  # noqa: E402
from sim.local.cluster import spark_home  # noqa: E402

D = "2024-07-03"  # the last day of a block of 7 days (blocks start on 1970-01-01 + 7k days)
LONG_DAYS = 180


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


def link_lakehouse(src: Path, dst: Path, tables: tuple[str, ...]) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for t in tables:
        (dst / t).symlink_to(src / t, target_is_directory=True)
    return dst


def gb(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


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


QUICK_BEHAVIORS, QUICK_USERS = 1_000_000, 2_500


def main() -> int:
    p = data_args(__doc__.splitlines()[0], "/tmp/sim-bench-nightly")
    p.add_argument("--heavy", type=int, default=50_000, help="behaviors of a heavy user (samples bench)")
    p.add_argument("--light", type=int, default=1_000, help="behaviors of a light user (samples bench)")
    p.add_argument("--group-users", type=int, default=10, help="users per group (samples bench)")
    p.add_argument("--group-impressions", type=int, default=100, help="impressions per user (samples)")
    p.add_argument("--lakehouse", default=None, metavar="s3a://BUCKET/PREFIX",
                   help="instead: the nightly jobs and the loader on this object store against local disk "
                        "(bench/nightly_store.py)")
    p.add_argument("--start-s3-server", action="store_true",
                   help="with --lakehouse: run against a local S3 server (s3proxy) started for the run")
    p.add_argument("--passes", type=int, default=3, help="with --lakehouse: loader passes (best of)")
    args = p.parse_args()
    if args.quick:
        args.behaviors, args.users, args.heavy, args.light, args.group_users, args.group_impressions = (
            QUICK_BEHAVIORS, QUICK_USERS, 5_000, 500, 4, 25)
    if args.lakehouse:
        from nightly_store import run
        return run(args)
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    from sim.adapters.spark import get_spark
    from sim.ubt.dates import shift_date
    prev = shift_date(D, -1)
    sets = ["--set", "spark.conf.spark.sql.shuffle.partitions=8"]

    # -- data ------------------------------------------------------------------------------------
    t = time.perf_counter()
    spark = get_spark("bench-data", master="local[2]", conf={"spark.driver.memory": args.driver_memory,
                                                             "spark.sql.shuffle.partitions": "8"})
    big = work / "big"
    info = generate(spark, big, args.behaviors, args.users, args.impressions_per_user)
    mixed = work / "mixed"
    n_group = args.group_users
    generate(spark, mixed, 0, 0, args.group_impressions,
             fixed_counts=[(n_group, args.heavy), (n_group, args.light)])
    # Two impression sets over the same behaviors and UBT: heavy users' and light users'.
    from sim.adapters.delta_io import read_table
    imps = read_table(spark, str(mixed / "impressions"))
    for name, cond in (("heavy", f"user_id <= {n_group}"), ("light", f"user_id > {n_group}")):
        lh = link_lakehouse(mixed, work / name, ("behaviors", "ubt"))
        imps.where(cond).write.format("delta").partitionBy("dt").save(str(lh / "impressions"))
    spark.stop()
    print(f"data: {info['behaviors']:,} behaviors of {info['users']:,} users over {LONG_DAYS + 1} days "
          f"({info['day_behaviors']:,} on {D}), {info['impressions']:,} impressions on {D}; samples bench: "
          f"{n_group} users x {args.heavy:,} and {n_group} users x {args.light:,} behaviors, "
          f"{args.group_impressions} impressions each ({time.perf_counter() - t:.0f}s)", flush=True)
    fig: dict = {"bench": "bench_nightly", "behaviors": info["behaviors"], "users": info["users"],
                 "day_behaviors": info["day_behaviors"], "impressions": info["impressions"]}

    # -- 1. UBT: full rebuild of 180 days vs the nightly update of one day -------------------------
    # Wall time on a shared two-core machine depends on what else runs; CPU seconds of the job's
    # processes (JVM start included) measure the work itself.
    mem = args.driver_memory
    before = shift_date(prev, -1)
    full = submit("build_ubt.py", big, "--date", before, "--backfill", before, *sets, driver_memory=mem)
    print(f"UBT full rebuild (180 days, {before}): {full.job:.1f}s in job, {full.wall:.1f}s wall, "
          f"{full.cpu:.1f} CPU-s", flush=True)
    fig.update(ubt_full_job_s=full.job, ubt_full_wall_s=full.wall, ubt_full_cpu_s=full.cpu)
    nights = {}
    for d, kind in ((prev, "ordinary night"), (D, "block's last night, with the rollup")):
        night = nights[d] = submit("build_ubt.py", big, "--date", d, *sets, driver_memory=mem)
        print(f"UBT nightly update {d} ({kind}): {night.job:.1f}s in job, {night.wall:.1f}s wall, "
              f"{night.cpu:.1f} CPU-s [{night.out.strip().splitlines()[-1]}]")
        print(f"  speed-up over the full rebuild: {full.job / night.job:.1f}x in job, "
              f"{full.wall / night.wall:.1f}x wall, {full.cpu / night.cpu:.1f}x CPU (target >= 5x)",
              flush=True)
    for d, key in ((prev, "ubt_night"), (D, "ubt_rollup_night")):
        fig.update({f"{key}_job_s": nights[d].job, f"{key}_wall_s": nights[d].wall, f"{key}_cpu_s": nights[d].cpu,
                    f"{key}_speedup_job": full.job / nights[d].job})
    block = (6 * nights[prev].job + nights[D].job) / 7
    fig.update(ubt_block_mean_job_s=block, ubt_block_speedup_job=full.job / block)
    print(f"UBT nightly, mean over a 7-day block (6 ordinary + 1 rollup): {block:.1f}s in job, "
          f"{full.job / block:.1f}x faster than the full rebuild", flush=True)
    night = nights[D]

    # -- 3. end to end: the nightly samples job after the nightly UBT -------------------------------
    samp = submit("build_samples.py", big, "--date", D, *sets, driver_memory=mem)
    print(f"samples {D}: {samp.job:.1f}s in job, {samp.wall:.1f}s wall, {samp.cpu:.1f} CPU-s, "
          f"{info['impressions']:,} impressions [{samp.out.strip().splitlines()[-1]}]")
    print(f"end-to-end nightly at {info['behaviors']:,} behaviors (build_ubt {D} + build_samples {D}): "
          f"{night.wall + samp.wall:.1f}s wall, {night.cpu + samp.cpu:.1f} CPU-s, peak memory "
          f"{gb(max(night.peak, samp.peak))} (build_ubt {gb(night.peak)}, build_samples {gb(samp.peak)}; "
          f"driver heap {mem})", flush=True)
    fig.update(samples_job_s=samp.job, samples_wall_s=samp.wall, samples_cpu_s=samp.cpu,
               nightly_wall_s=night.wall + samp.wall, nightly_cpu_s=night.cpu + samp.cpu,
               nightly_peak_gib=max(night.peak, samp.peak) / 2**30)

    # -- 2. samples per impression: ~50,000 vs ~1,000 behaviors per user ----------------------------
    submit("build_ubt.py", mixed, "--date", prev, "--backfill", prev, *sets, driver_memory=mem)
    per = {}
    for name in ("heavy", "light"):
        r = submit("build_samples.py", work / name, "--date", D, *sets, driver_memory=mem)
        n = int(re.search(r"samples=(\d+)", r.out).group(1))
        per[name] = (r.job / n, r.wall / n, r.cpu / n)
        print(f"samples, {name} users: {n:,} impressions, {1000 * per[name][0]:.1f} ms/impression in job, "
              f"{1000 * per[name][1]:.1f} ms wall, {1000 * per[name][2]:.1f} CPU-ms", flush=True)
    print(f"samples per-impression ratio heavy/light: {per['heavy'][0] / per['light'][0]:.2f} in job, "
          f"{per['heavy'][1] / per['light'][1]:.2f} wall, {per['heavy'][2] / per['light'][2]:.2f} CPU "
          f"(target <= 2)")
    fig.update(samples_ms_per_impression_heavy=1000 * per["heavy"][0],
               samples_ms_per_impression_light=1000 * per["light"][0],
               samples_heavy_light_ratio=per["heavy"][0] / per["light"][0], load_avg=os.getloadavg()[0])
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in fig.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
