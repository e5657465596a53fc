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

The data is the benchmarks' synthetic nightly data (bench/common.py :func:`~common.generate`).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import sys
import time
from pathlib import Path

from common import D, LONG_DAYS, QUICK_BEHAVIORS, QUICK_USERS, data_args, generate, submit


def link_lakehouse(src: Path, dst: Path, tables: tuple[str, ...]) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for t in tables:
        (dst / t).symlink_to(src / t, target_is_directory=True)
    return dst


def gb(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


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
