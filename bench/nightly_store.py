"""``bench/bench_nightly.py --lakehouse s3a://BUCKET/PREFIX``: the nightly jobs and the training loader on
an object store against local disk, same data, one run.

1. Data (:func:`common.generate`, ``--behaviors``) written to a local lakehouse, then copied by
   Spark to the ``s3a://`` one (not timed).
2. On each lakehouse, as spark-submit processes (``local[2]``): the UBT of D-1 (full build, not
   compared), then the nightly UBT of D and the samples of D, timed. The figures are the ratios
   S3 / local of in-job seconds and wall seconds (> 1: the store is slower).
3. The loader (:class:`sim.training.loader.ShardedLoader`, one process, 2 reader threads) over the
   samples snapshot of D read from each lakehouse (the local files, and the same table through
   ``s3://`` with pyarrow's S3 file system): rows/s, best of ``--passes``, and their ratio.

The store is the one the ``AWS_*`` variables name (``AWS_ENDPOINT_URL`` etc., see README "Object
storage"); ``--start-s3-server`` starts the local S3 server (s3proxy, :class:`sim.local.cluster.LocalCluster`)
for the run and stops it after. On one machine that server writes to the same disk through one more
process and HTTP, so its ratio is the cost of the protocol and the S3A / Delta round trips, not of a
remote network. The last line is JSON with the figures.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from pathlib import Path

from common import D, best_of, generate, loader_epoch, submit


def _loader_rows_per_s(table: str, passes: int) -> tuple[float, int]:
    from sim.adapters import delta_io
    from sim.samples.contract import TRAINING_COLUMNS
    files = [(f.path, f.num_rows) for f in delta_io.log_snapshot(table).between(D, D)]
    rows = sum(n for _, n in files)
    loader_epoch(files, 2, list(TRAINING_COLUMNS), 256)  # warm-up, not counted: imports, first opens
    return best_of(passes, lambda: loader_epoch(files, 2, list(TRAINING_COLUMNS), 256)), rows


def run(args) -> int:
    from sim.adapters import storage
    if not storage.is_remote(args.lakehouse):
        raise SystemExit(f"--lakehouse {args.lakehouse}: give an s3a:// location (the store to compare "
                         "with local disk)")
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    bucket = storage.bucket_key(args.lakehouse).split("/", 1)[0]
    with contextlib.ExitStack() as stack:
        if args.start_s3_server:
            from sim.local.cluster import LocalCluster
            cluster = stack.enter_context(LocalCluster(work / "s3-server", bucket=bucket))
            cluster.start_s3()
            os.environ.update(cluster.client_env)
            print(f"local S3 server (s3proxy) at {cluster.s3_endpoint}", flush=True)
        elif not os.environ.get("AWS_ACCESS_KEY_ID") and not os.environ.get("AWS_ENDPOINT_URL"):
            print("note: no AWS_* variables set; S3A and pyarrow use their default credential chains",
                  flush=True)
        return _compare(args, work)


def _compare(args, work: Path) -> int:
    from sim.adapters import delta_io, storage
    from sim.adapters.spark import get_spark, s3a_jars
    from sim.ubt.dates import shift_date
    prev = shift_date(D, -1)
    local, remote = work / "local", storage.spark_uri(args.lakehouse.rstrip("/"))
    sets = ["--set", "spark.conf.spark.sql.shuffle.partitions=8"]
    t = time.perf_counter()
    spark = get_spark("bench-data", master="local[2]", conf={"spark.driver.memory": args.driver_memory,
                                                             "spark.sql.shuffle.partitions": "8"})
    info = generate(spark, local, args.behaviors, args.users, args.impressions_per_user)
    for table in ("behaviors", "impressions"):
        (delta_io.read_table(spark, str(local / table)).write.format("delta").mode("overwrite")
         .partitionBy("dt").save(delta_io.table_path(remote, table)))
    spark.stop()
    print(f"data: {info['behaviors']:,} behaviors of {info['users']:,} users, {info['impressions']:,} "
          f"impressions on {D}; copied to {remote} ({time.perf_counter() - t:.0f}s)", flush=True)

    # spark-submit owns its JVM: the S3A jars go on the driver's class path (local[2]: no executors).
    extra = ["--driver-class-path", os.pathsep.join(s3a_jars())] if s3a_jars() else []
    runs: dict[str, dict] = {}
    for name, lake in (("local", str(local)), ("s3", remote)):
        mem = args.driver_memory
        submit("build_ubt.py", lake, "--date", prev, "--backfill", prev, *sets, driver_memory=mem, extra=extra)
        ubt = submit("build_ubt.py", lake, "--date", D, *sets, driver_memory=mem, extra=extra)
        samples = submit("build_samples.py", lake, "--date", D, *sets, driver_memory=mem, extra=extra)
        runs[name] = {"ubt": ubt, "samples": samples}
        print(f"{name:<6} nightly UBT {D}: {ubt.job:.1f}s in job, {ubt.wall:.1f}s wall; samples {D}: "
              f"{samples.job:.1f}s in job, {samples.wall:.1f}s wall", flush=True)
    res: dict = {"behaviors": info["behaviors"], "impressions": info["impressions"], "lakehouse": remote}
    for stage in ("ubt", "samples"):
        s3, loc = runs["s3"][stage], runs["local"][stage]
        res[f"{stage}_s3_over_local_job"] = s3.job / loc.job
        res[f"{stage}_s3_over_local_wall"] = s3.wall / loc.wall
        print(f"{stage}: S3 / local = {s3.job / loc.job:.2f} in job, {s3.wall / loc.wall:.2f} wall", flush=True)

    local_rate, rows = _loader_rows_per_s(delta_io.table_path(str(local), "samples"), args.passes)
    s3_rate, _ = _loader_rows_per_s(delta_io.table_path(remote, "samples"), args.passes)
    res.update(loader_rows=rows, loader_local_rows_per_s=local_rate, loader_s3_rows_per_s=s3_rate,
               loader_s3_over_local=s3_rate / local_rate)
    print(f"loader over {rows:,} samples rows of {D}: local {local_rate:,.0f} rows/s, S3 {s3_rate:,.0f} rows/s "
          f"(S3 / local = {s3_rate / local_rate:.2f})")
    print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in res.items()}))
    return 0
