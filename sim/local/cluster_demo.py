"""The demo flow on a local cluster (``make cluster-demo``): everything on 127.0.0.1, each piece the
server a real deployment has (README "Running on a cluster"):

1. start the cluster (:class:`sim.local.cluster.LocalCluster`): the S3 server (s3proxy), a Spark master and
   two workers, the MLflow tracking server (SQLite backend store, artifacts on the S3 server);
2. the nightly jobs through ``spark-submit --master spark://...`` on an ``s3a://`` lakehouse: generate
   the synthetic logs, backfill the User Behavior Tree, build the samples up to the day before the last;
   then the night of the last day as a scheduler runs it, ``jobs/nightly.py`` in one spark-submit (its
   stages in the driver's one SparkSession): UBT(D), samples(D), and the export of UBT(D) into the
   serving store (an embedded SQLite file under the work directory);
3. train each model on the cluster: ``sim.train --np 2 --spark-master spark://...`` (the Horovod ranks
   as Spark tasks), reading the samples from S3, tracked on the server, the model's artifacts uploaded
   through the server to the S3 bucket;
4. ``sim.compare`` from the tracking server: prints the comparison;
5. stop everything it started, also when a step failed.

The stages are :mod:`sim.local.demo`'s, with a ``spark-submit`` launcher and the cluster's locations
(:func:`run_flow`, which tests/test_cluster.py runs on its own cluster). The
default data are small (300 users, 3 impression days, two models, one epoch), not the demo's; ``--set`` / ``--train-set`` / ``--models`` scale it up. The figures of data
this small say nothing about the models: the point is the flow.
"""
from __future__ import annotations

import argparse
import logging
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

from sim.adapters import storage
from sim.config import ConfigError, load_pipeline_conf
from sim.local.cluster import LocalCluster
from sim.local.demo import (compare_stage, data_stages, plan, resolve_models, run_stages, split_sets,
                            train_stages)
from sim.ubt.dates import shift_date

log = logging.getLogger("sim.local.cluster_demo")

# Small data: 300 users with 40 days of history, impressions on 3 days (train, validation, test).
SMALL_DATA = ["generator.users=300", "generator.history_days=40", "generator.impression_days=3",
              "generator.mean_behaviors_per_user=60", "generator.max_behaviors_per_user=300",
              "generator.heavy_users=1", "generator.impressions_per_user_day=8", "generator.items=5000",
              "generator.categories=50", "generator.topics=10", "windows.long_days=30",
              "windows.short_days=7", "caps.long_cap=300", "caps.hard_k=50", "caps.short_cap=20"]
# Two one-core executors: a few partitions, not Spark's 200.
FEW_PARTITIONS = ["spark.conf.spark.sql.shuffle.partitions=2", "spark.conf.spark.databricks.delta.snapshotPartitions=2"]
SMALL_TRAIN = ["train.epochs=1", "train.threads=1", "train.batch_size=128"]
DEFAULT_MODELS = "din,sim_hard"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m sim.local.cluster_demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--work", default=None, help="directory for the servers' data and logs (default: a "
                   "temporary directory, removed at the end)")
    p.add_argument("--models", default=DEFAULT_MODELS, help="comma-separated experiment ids of conf/experiments.yaml, 'all' or 'paper'")
    p.add_argument("--np", type=int, default=2, help="Horovod ranks (Spark tasks) per training run")
    p.add_argument("--workers", type=int, default=2, help="Spark workers (one core each)")
    p.add_argument("--worker-memory", default="1536m", help="memory of each Spark worker")
    p.add_argument("--experiment", default="sim-cluster-demo", help="MLflow experiment of the runs")
    p.add_argument("--prefix", default="demo", help="key prefix of the lakehouse in the S3 bucket")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="pipeline config override for the Spark jobs, after the small defaults "
                        "(e.g. generator.users=3000)")
    p.add_argument("--train-set", action="append", default=[], metavar="KEY=VALUE",
                   help="experiment config override for training, after the defaults (e.g. train.epochs=4)")
    return p.parse_args(argv)


def run_demo(args: argparse.Namespace, work: Path) -> int:
    """Start the cluster under ``work``, run the flow on it, stop the cluster (also on failure)."""
    overrides = SMALL_DATA + FEW_PARTITIONS + args.overrides
    flow = flow_plan(args, overrides)  # fails on a bad model name or override before anything starts
    started = time.perf_counter()
    with LocalCluster(work / "cluster") as cluster:
        print(f"=== starting the local cluster under {cluster.work}", flush=True)
        cluster.start_s3()
        print(f"S3 server (s3proxy): {cluster.s3_endpoint}, bucket {cluster.bucket}", flush=True)
        cluster.start_spark(workers=args.workers, memory=args.worker_memory)
        print(f"Spark master: {cluster.spark_master} ({args.workers} workers)", flush=True)
        cluster.start_mlflow()
        print(f"MLflow tracking server: {cluster.tracking_uri} (artifacts in s3://{cluster.bucket}/mlflow)",
              flush=True)
        print(f"cluster up in {time.perf_counter() - started:.0f}s; servers (process groups): "
              + ", ".join(f"{sv.name}={sv.proc.pid}" for sv in cluster.services), flush=True)
        run_flow(cluster, args, work, overrides, flow=flow)
        print(f"stopping the local cluster ({len(cluster.services)} servers)", flush=True)
    print(f"cluster demo done in {time.perf_counter() - started:.0f}s; everything it started is stopped",
          flush=True)
    return 0


def flow_plan(args: argparse.Namespace, overrides: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """The flow's models and dates (:func:`sim.local.demo.plan`); a bad model name or override fails here."""
    return resolve_models(args.models), plan(load_pipeline_conf(overrides=list(overrides)))


def run_flow(cluster: LocalCluster, args: argparse.Namespace, work: Path, overrides: Sequence[str],
             env: dict | None = None, flow: tuple[list[str], dict[str, str]] | None = None) -> dict[str, float]:
    """The demo's stages on a running ``cluster`` (S3 server, Spark master, MLflow server): the jobs with
    ``overrides`` through its spark-submit on ``s3a://<bucket>/<args.prefix>/lakehouse``, training on its
    Spark workers, the comparison from its server. ``env``: more variables for the stages; ``flow``:
    :func:`flow_plan` when the caller has it already. Returns each stage's seconds; a failed stage raises
    (the caller stops the cluster)."""
    models, d = flow or flow_plan(args, overrides)
    lakehouse = f"s3a://{cluster.bucket}/{args.prefix}/lakehouse"
    spark_args = ["--lakehouse", lakehouse] + [a for o in overrides for a in ("--set", o)]
    # Training reads the same location in the spelling of its readers (pyarrow, delta-rs): s3://.
    train_sets = [f"lakehouse={storage.arrow_uri(lakehouse)}", f"experiment={args.experiment}", "dataset=synthetic",
                  f"tracking_uri={cluster.tracking_uri}", f"train.checkpoint_dir={work / 'checkpoints'}",
                  *split_sets(d), *SMALL_TRAIN, *args.train_set]
    # The last day is the night's: one spark-submit of jobs/nightly.py, the scheduler's command.
    night = d["samples_to"]
    stages = data_stages(cluster.spark_submit(), spark_args, {**d, "samples_to": shift_date(night, -1)})
    stages.append(("nightly", f"nightly {night}: UBT, samples, export (jobs/nightly.py, one spark-submit)",
                   [*cluster.spark_submit(), "jobs/nightly.py", "--date", night, *spark_args,
                    "--set", f"nightly.export.store={serving_store(work)}"]))
    stages += train_stages(sys.executable, models, [1], args.np, train_sets,
                           launcher=["--spark-master", cluster.spark_master])
    stages.append(compare_stage(sys.executable, args.experiment, cluster.tracking_uri, work / "compare_out"))
    return run_stages(stages, {**cluster.base_env(), **(env or {})}, label="cluster demo")


def serving_store(work: Path) -> Path:
    """The serving store the flow's nightly command exports into."""
    return work / "serving" / "ubt.sqlite"


def main(argv: Sequence[str] | None = None) -> int:
    from sim.cli import setup_logging
    setup_logging()
    args = parse_args(argv)
    # SIGTERM (a scheduler, `kill`) unwinds like Ctrl-C: the running stage and the servers are stopped.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        if args.work:
            work = Path(args.work).resolve()
            work.mkdir(parents=True, exist_ok=True)
            return run_demo(args, work)
        with tempfile.TemporaryDirectory(prefix="sim-cluster-demo-") as d:
            return run_demo(args, Path(d))
    except ConfigError as e:  # a bad --set, before anything started
        log.error("%s", e)
        return 2


if __name__ == "__main__":
    sys.exit(main())
