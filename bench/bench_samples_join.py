"""Benchmark: the samples of one day via the UBT (sim.samples.job.build_samples) against the obvious
point-in-time range join of the impressions to 180 days of raw behaviors (sim.samples.naive), same
data, same rows (target: the UBT path at least 10x faster at 20M behaviors).

    .venv/bin/python bench/bench_samples_join.py [--behaviors 20000000] [--users 50000] [--exact]

1. data: the synthetic behaviors (181 days ending on D) and impressions (on D) of bench/common.py,
   bench_nightly's too (timed, reported, not compared);
2. UBT(D-1), a full build of its 180 days (timed and reported apart: the nightly path pays for it
   once per day, amortised over the day's samples; see bench_nightly for the nightly update);
3. build_samples(D): the job as it runs at night, Delta write of the samples included;
   with ``--transforms`` also its transforms alone (build_sequences + to_samples on UBT(D-1) read by
   time travel), written like the join: what the job costs beyond its commit checks and rejects;
4. the join: the same impressions joined to the raw behaviors, written to a Delta table the same way;
5. the rows compared: per impression an xxhash64 of all columns of the samples contract, the two tables
   joined on impression_id, every missing or differing row counted (``same_rows``: none); with
   ``--exact`` also exceptAll both ways on the full rows (off by default: at 20M that shuffles
   200,000 rows of nine arrays of up to 1,000 elements twice).

Both run in one Spark session, local[2] (the two-core machine), with bench_nightly's settings (8 shuffle
partitions, 6 GB driver heap), the job first and the join second (with ``--reuse`` the job also pays
for the JVM's warm-up). Peak memory is the RSS of this process and the JVM during a phase; the JVM
keeps the heap it grew, so a later phase's peak includes an earlier one's. ``--join-timeout`` cancels
the join (its Spark jobs) after that many seconds; the speed-up is then reported as a lower bound.
The last line is JSON of all figures.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import threading
import time
from pathlib import Path

from common import D, LONG_DAYS, QUICK_BEHAVIORS, QUICK_USERS, Resources, data_args, generate


def timed(fn):
    """(result, wall seconds, CPU seconds and peak RSS of this process and the Spark JVM)."""
    with Resources() as res:
        t = time.perf_counter()
        out = fn()
        wall = time.perf_counter() - t
    return out, wall, res.cpu, res.peak


def compare(spark, a_path: str, b_path: str, exact: bool) -> dict:
    """Rows of two samples tables: counts, rows missing from either or differing (by an xxhash64 of
    every column, per impression_id), and with ``exact`` the exceptAll counts of the full rows."""
    from pyspark.sql import functions as F
    from sim.adapters.delta_io import read_table
    from sim.samples.contract import SAMPLES_COLUMNS
    a, b = (read_table(spark, p).select(*SAMPLES_COLUMNS) for p in (a_path, b_path))
    ha, hb = (x.select("impression_id", F.xxhash64(*SAMPLES_COLUMNS).alias(f"h{n}"))
              for x, n in ((a, "a"), (b, "b")))
    r = ha.join(hb, "impression_id", "full").agg(
        F.count("ha").alias("rows_a"), F.count("hb").alias("rows_b"),
        F.sum((F.col("ha").isNull() | F.col("hb").isNull()).cast("int")).alias("missing"),
        F.sum((F.col("ha") != F.col("hb")).cast("int")).alias("differing"),
        F.count_distinct("impression_id").alias("ids")).first()
    out = {k: int(r[k] or 0) for k in ("rows_a", "rows_b", "missing", "differing", "ids")}
    out["same"] = (out["rows_a"] == out["rows_b"] == out["ids"] and out["missing"] == 0
                   and out["differing"] == 0)
    out["method"] = "xxhash64 of all columns per impression_id"
    if exact:
        out["except_a_b"], out["except_b_a"] = a.exceptAll(b).count(), b.exceptAll(a).count()
        out["same"] = out["same"] and out["except_a_b"] == out["except_b_a"] == 0
        out["method"] += " + exceptAll of the full rows both ways"
    return out


def main() -> int:
    p = data_args(__doc__.splitlines()[0], "/tmp/sim-bench-samples-join")
    p.add_argument("--reuse", action="store_true", help="keep the data and UBT of a previous run in --work")
    p.add_argument("--shuffle-partitions", type=int, default=8)
    p.add_argument("--join-timeout", type=float, default=3600.0, help="seconds before the join is cancelled")
    p.add_argument("--exact", action="store_true", help="also compare the full rows with exceptAll")
    p.add_argument("--transforms", action="store_true",
                   help="also time the job's transforms alone, written the way the join is")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="pipeline config overrides (windows, caps)")
    args = p.parse_args()
    if args.quick:
        args.behaviors, args.users = QUICK_BEHAVIORS, QUICK_USERS
    from sim.adapters.delta_io import read_table, table_path
    from sim.adapters.spark import get_spark
    from sim.config import load_pipeline_conf
    from sim.samples.contract import SampleSpec
    from sim.samples.job import build_samples
    from sim.samples.naive import join_samples
    from sim.samples.transforms import split_impressions
    from sim.ubt.dates import shift_date
    from sim.ubt.job import build_ubt

    cfg = load_pipeline_conf(overrides=args.overrides)
    spec = SampleSpec.from_conf(cfg)
    work = Path(args.work)
    lh = work / "lake"
    fresh = not (args.reuse and (lh / "ubt" / "_delta_log").is_dir())
    if fresh:
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
    for t in ("samples", "samples_join", "samples_transforms", "rejects"):
        shutil.rmtree(lh / t, ignore_errors=True)
    spark = get_spark("bench-samples-join", master="local[2]", conf={
        "spark.driver.memory": args.driver_memory,
        "spark.sql.shuffle.partitions": str(args.shuffle_partitions)})
    prev = shift_date(D, -1)
    fig: dict = {"date": D, "long_days": spec.windows.long_days, "caps": spec.sizes,
                 "shuffle_partitions": args.shuffle_partitions, "driver_memory": args.driver_memory,
                 "cpus": os.cpu_count()}

    if fresh:
        info, fig["generate_s"], _, _ = timed(lambda: generate(spark, lh, args.behaviors, args.users,
                                                              args.impressions_per_user))
        _, fig["ubt_build_s"], fig["ubt_build_cpu_s"], _ = timed(lambda: build_ubt(
            spark, str(lh), prev, spec.windows, spec.caps, backfill_from=prev))
    else:
        b = read_table(spark, table_path(str(lh), "behaviors"))
        info = {"behaviors": b.count(), "users": b.select("user_id").distinct().count(),
                "impressions": read_table(spark, table_path(str(lh), "impressions")).count(),
                "day_behaviors": b.where(f"dt = '{D}'").count()}
    fig.update(info)
    print(f"data: {info['behaviors']:,} behaviors of {info['users']:,} users over {LONG_DAYS + 1} days "
          f"({info['day_behaviors']:,} on {D}), {info['impressions']:,} impressions on {D}"
          + (f"; generated in {fig['generate_s']:.0f}s, UBT({prev}) full build {fig['ubt_build_s']:.0f}s"
             if fresh else " (reused)"), flush=True)

    # -- the job: UBT(D-1) + behaviors of D before t ----------------------------------------------
    res, fig["ubt_s"], fig["ubt_cpu_s"], fig["ubt_peak_bytes"] = timed(
        lambda: build_samples(spark, str(lh), D, spec))
    fig["samples"] = res.impressions
    print(f"build_samples {D} (UBT): {fig['ubt_s']:.1f}s wall, {fig['ubt_cpu_s']:.0f} CPU-s, "
          f"peak {fig['ubt_peak_bytes'] / 2**30:.2f} GiB, {res.impressions:,} samples", flush=True)

    # -- the same transforms without the job's bookkeeping (commit checks, rejects, retention) ------
    def run_transforms():
        from sim.adapters.delta_io import version_for_date
        from sim.samples.transforms import build_sequences, to_samples
        from sim.ubt.transforms import missing_key
        ubt_path = table_path(str(lh), "ubt")
        ubt = read_table(spark, ubt_path, version_for_date(spark, ubt_path, "build_ubt", prev))
        imps = read_table(spark, table_path(str(lh), "impressions")).where(f"dt = '{D}'")
        b = read_table(spark, table_path(str(lh), "behaviors")).where(~missing_key())
        first = b.where(f"dt = '{shift_date(D, -spec.windows.long_days)}'")
        seqs = build_sequences(split_impressions(imps, D)[0], ubt, b.where(f"dt = '{D}'"), first, spec, D)
        (to_samples(seqs, spec).write.format("delta").mode("overwrite").partitionBy("dt")
         .save(table_path(str(lh), "samples_transforms")))

    if args.transforms:
        _, fig["ubt_transforms_s"], fig["ubt_transforms_cpu_s"], _ = timed(run_transforms)
        print(f"build_sequences + to_samples {D} alone (UBT, no commit checks or rejects): "
              f"{fig['ubt_transforms_s']:.1f}s wall, {fig['ubt_transforms_cpu_s']:.0f} CPU-s", flush=True)

    # -- the join: impressions x raw behaviors of the window ----------------------------------------
    join_path = table_path(str(lh), "samples_join")

    def run_join():
        imps = read_table(spark, table_path(str(lh), "impressions")).where(f"dt = '{D}'")
        valid, _ = split_impressions(imps, D)
        rows = join_samples(valid, read_table(spark, table_path(str(lh), "behaviors")), spec)
        rows.write.format("delta").mode("overwrite").partitionBy("dt").save(join_path)

    timer = threading.Timer(args.join_timeout, spark.sparkContext.cancelAllJobs)
    timer.start()
    error = None
    try:
        _, fig["join_s"], fig["join_cpu_s"], fig["join_peak_bytes"] = timed(run_join)
    except Exception as e:  # cancelled, or the join fell over (out of memory, lost executor)
        error = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
    finally:
        timer.cancel()
    if error:
        fig.update(join_error=error, join_s=None, speedup=None, same_rows=False,
                   speedup_at_least=round(args.join_timeout / fig["ubt_s"], 1))
        print(f"the join did not finish: {error} (the UBT path is at least {fig['speedup_at_least']}x "
              f"faster)", flush=True)
    else:
        fig["speedup"] = round(fig["join_s"] / fig["ubt_s"], 2)
        fig["speedup_cpu"] = round(fig["join_cpu_s"] / max(fig["ubt_cpu_s"], 1e-9), 2)
        print(f"range join {D} (raw behaviors): {fig['join_s']:.1f}s wall, {fig['join_cpu_s']:.0f} CPU-s, "
              f"peak {fig['join_peak_bytes'] / 2**30:.2f} GiB", flush=True)
        cmp, fig["compare_s"], _, _ = timed(lambda: compare(
            spark, table_path(str(lh), "samples"), join_path, args.exact))
        fig["same_rows"] = cmp.pop("same")
        fig["compare"] = cmp
        print(f"rows: {cmp['rows_a']:,} (job) vs {cmp['rows_b']:,} (join), {cmp['missing']} missing, "
              f"{cmp['differing']} differing [{cmp['method']}] -> same_rows={fig['same_rows']}")
        print(f"speed-up of the UBT path over the join: {fig['speedup']}x wall, {fig['speedup_cpu']}x CPU "
              f"(target >= 10x); load average {os.getloadavg()[0]:.1f}")
        if args.transforms:
            fig["speedup_transforms"] = round(fig["join_s"] / fig["ubt_transforms_s"], 2)
            print(f"  the job's transforms alone: {fig['speedup_transforms']}x wall")
    fig["load_avg"] = round(os.getloadavg()[0], 1)
    spark.stop()
    print(json.dumps(fig, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
