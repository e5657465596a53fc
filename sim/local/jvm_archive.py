"""Builds the driver JVM's class-data archive (:mod:`sim.adapters.jvm_archive`) by running a small
pipeline in a JVM that writes the archive as it exits; ``make setup`` runs ``python -m
sim.local.jvm_archive build``. Also prints the archive's path and the driver options that map it."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from sim.adapters.jvm_archive import archive_path, driver_options


def _workload(lakehouse: str) -> None:
    """What a pipeline run loads: the generator, a full and a nightly UBT build, the samples of a day
    (a few users, so the JVM loads the classes of every step and is done in about a minute)."""
    from sim.adapters.spark import spark_from_conf
    from sim.config import load_pipeline_conf
    from sim.inputs.ingest import run_generator
    from sim.samples.contract import SampleSpec
    from sim.samples.job import build_samples
    from sim.ubt.dates import shift_date
    from sim.ubt.job import build_ubt
    cfg = load_pipeline_conf(None, [
        "generator.users=6", "generator.history_days=16", "generator.impression_days=1",
        "generator.mean_behaviors_per_user=20", "generator.max_behaviors_per_user=100", "generator.heavy_users=1",
        "generator.impressions_per_user_day=2", "generator.items=200", "generator.categories=6",
        "generator.topics=3", "validation.max_reject_ratio=0.9", "windows.long_days=6", "windows.short_days=2",
        "caps.long_cap=20", "caps.hard_k=10", "caps.short_cap=5"])
    spark = spark_from_conf(cfg, job="jvm-archive")
    try:
        run_generator(spark, cfg.generator, lakehouse, max_reject_ratio=0.9)
        days = sorted(r[0] for r in spark.read.format("delta").load(f"{lakehouse}/impressions")
                      .select("dt").distinct().collect())
        last = str(days[-1])
        d0, d1 = shift_date(last, -2), shift_date(last, -1)
        build_ubt(spark, lakehouse, d0, cfg.windows, cfg.caps, backfill_from=d0,
                  backfill_days=cfg.retention.backfill_days)
        build_ubt(spark, lakehouse, d1, cfg.windows, cfg.caps, backfill_from=d0,
                  backfill_days=cfg.retention.backfill_days)
        build_samples(spark, lakehouse, last, SampleSpec.from_conf(cfg))
    finally:
        spark.stop()
        _wait_for_jvm_exit()


def _wait_for_jvm_exit() -> None:
    """End the driver JVM and wait for it: it writes the archive as it exits, after this process would."""
    from pyspark import SparkContext
    proc = getattr(SparkContext._gateway, "proc", None)
    if proc is not None:
        proc.stdin.close()  # PySpark's gateway exits when its standard input closes
        proc.wait(timeout=300)


def build(force: bool = False) -> Path:
    """Build the archive of this machine's JVM and jars (a no-op when it exists); returns its path."""
    path = archive_path()
    if path.is_file() and not force:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tempfile.TemporaryDirectory(prefix="sim-jvm-archive-") as work:
        env = dict(os.environ, SIM_JVM_ARCHIVE="0", SIM_NOT_SPARK_SUBMIT="1")
        env["SPARK_SUBMIT_OPTS"] = f"-XX:ArchiveClassesAtExit={tmp} -Xlog:cds=off -Xlog:cds+dynamic=off"
        proc = subprocess.run([sys.executable, "-m", "sim.local.jvm_archive", "_workload", str(Path(work) / "lakehouse")],
                              env=env, capture_output=True, text=True)
    if proc.returncode != 0 or not tmp.is_file():
        tmp.unlink(missing_ok=True)
        tail = proc.stderr[proc.stderr.rfind("Traceback"):][-3000:]
        raise RuntimeError(f"building the JVM class-data archive failed (exit {proc.returncode}); the jobs run "
                           f"without it.\n{tail}")
    os.replace(tmp, path)  # atomic: a half-written archive is never at the archive's path
    import pyspark
    for old in path.parent.glob(f"spark-{pyspark.__version__}-*.jsa"):
        if old != path:
            old.unlink(missing_ok=True)  # of jars since replaced: never used again
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sim.local.jvm_archive", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build the archive (a no-op when it exists)")
    b.add_argument("--force", action="store_true", help="build it again")
    sub.add_parser("options", help="print the driver JVM options that map the archive (empty when none)")
    sub.add_parser("path", help="print where the archive of this JVM and these jars is")
    w = sub.add_parser("_workload")
    w.add_argument("lakehouse")
    args = p.parse_args(argv)
    if args.cmd == "build":
        print(build(force=args.force))
    elif args.cmd == "options":
        print(driver_options())
    elif args.cmd == "path":
        print(archive_path())
    else:
        _workload(args.lakehouse)
    return 0


if __name__ == "__main__":
    sys.exit(main())
