"""Data-layer benchmark: generator and importer throughput (behaviors per second) and peak memory.

    python bench/bench_data.py [--behaviors 10000000] [--phases generate,import] [--workdir DIR] [--quick]

1. generate: ``sim.inputs.ingest.run_generator`` with ``users = behaviors / mean_behaviors_per_user`` (validation,
   impressions with the click truth, Delta writes of behaviors / impressions / rejects included).
2. import: the generated behaviors written as a Taobao UserBehavior CSV (not timed), then
   ``sim.inputs.ingest.run_import(format=taobao)`` on it (parse, validate, protocol impressions, writes).
Peak memory is the largest resident set of this process plus its children (the Spark JVM), sampled
every 0.2 s; CPU is the user+system seconds they consumed. Behaviors per CPU-second does not depend on
what else runs on the machine (wall-clock throughput does: the load average is printed). Spark runs with
conf/pipeline.yaml (local[2], driver memory from the config). ``--quick``: 500,000 behaviors. The last
line is JSON of the figures of each phase.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

from common import Resources  # first: it puts the checkout's sim on sys.path
from sim.config import load_pipeline_conf
from sim.inputs.generator.settings import GeneratorConfig
from sim.inputs.ingest import run_generator, run_import
from sim.adapters.spark import spark_from_conf


def figures(res: Resources, n: int, secs: float) -> dict:
    return {"behaviors": n, "seconds": round(secs, 1), "behaviors_per_s": round(n / secs),
            "behaviors_per_cpu_s": round(n / max(res.cpu, 1e-9)), "cpu_s": round(res.cpu, 1),
            "peak_gib": round(res.peak / 2**30, 2)}


def rate_line(res: Resources, n: int, secs: float) -> str:
    return (f"{n / secs:,.0f} behaviors/s wall; {res.cpu:,.0f} CPU-s = {n / max(res.cpu, 1e-9):,.0f} "
            f"behaviors per CPU-second; peak RSS {res.peak / 2**30:.2f} GiB; "
            f"load average {os.getloadavg()[0]:.1f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--behaviors", type=int, default=10_000_000)
    ap.add_argument("--phases", default="generate,import")
    ap.add_argument("--workdir", default=None, help="default: a temporary directory, removed afterwards")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--quick", action="store_true", help="500,000 behaviors (about two minutes)")
    args = ap.parse_args()
    if args.quick:
        args.behaviors = 500_000
    fig: dict = {"bench": "bench_data", "target_behaviors": args.behaviors}
    cfg = load_pipeline_conf(overrides=args.overrides)
    users = max(1, round(args.behaviors / cfg.generator.mean_behaviors_per_user))
    gc = GeneratorConfig.parse({**cfg.generator.model_dump(), "users": users})
    work = args.workdir or tempfile.mkdtemp(prefix="bench_data_")
    phases = set(args.phases.split(","))
    spark = spark_from_conf(cfg, job="bench_data")
    print(f"bench_data: target {args.behaviors:,} behaviors = {gc.users:,} users x mean {gc.mean_behaviors_per_user:g}; "
          f"Spark {spark.sparkContext.master}, driver memory {spark.conf.get('spark.driver.memory', '?')}, "
          f"{os.cpu_count()} cpus; workdir {work}", flush=True)
    lake = os.path.join(work, "lake_generated")
    try:
        if "generate" in phases or "import" in phases:
            with Resources() as res:
                t = time.time()
                rep = run_generator(spark, gc, lake, max_reject_ratio=0.05)
                secs = time.time() - t
            n = rep.inputs[0].counts.read
            fig["generate"] = figures(res, n, secs)
            print(f"generate: {n:,} behaviors + {rep.written['impressions']:,} impressions in {secs:.1f}s: "
                  f"{rate_line(res, n, secs)}", flush=True)
            print(f"  {rep.summary()}", flush=True)
        if "import" in phases:
            csv_dir = os.path.join(work, "UserBehavior")
            t = time.time()
            beh = spark.read.format("delta").load(os.path.join(lake, "behaviors"))
            from pyspark.sql import functions as F
            beh.select(F.concat_ws(",", "user_id", "item_id", "category_id", "behavior_type", "ts")
                       .alias("value")).write.mode("overwrite").text(csv_dir)
            size = sum(os.path.getsize(os.path.join(csv_dir, f)) for f in os.listdir(csv_dir))
            print(f"  (taobao CSV written in {time.time() - t:.1f}s, {size / 2**20:,.0f} MiB)", flush=True)
            with Resources() as res:
                t = time.time()
                rep = run_import(spark, "taobao", csv_dir, os.path.join(work, "lake_imported"),
                                 max_reject_ratio=0.05, date_range=(None, None))
                secs = time.time() - t
            n = rep.inputs[0].counts.read
            fig["import"] = figures(res, n, secs)
            print(f"import taobao: {n:,} lines ({rep.written['impressions']:,} impressions) in {secs:.1f}s: "
                  f"{rate_line(res, n, secs)}", flush=True)
            print(f"  {rep.summary()}", flush=True)
    finally:
        spark.stop()
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    fig["load_avg"] = round(os.getloadavg()[0], 1)
    print(json.dumps(fig))
    return 0


if __name__ == "__main__":
    sys.exit(main())
