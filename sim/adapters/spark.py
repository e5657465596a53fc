"""The one place a SparkSession is built: Delta extensions and catalog, the cached Delta jars.

Three ways a job runs, with no code change between them:
- ``python jobs/x.py`` or tests: we launch the JVM, with the Delta jars that ``make setup`` cached
  (``$SIM_CACHE/delta-<version>``), or ``spark.jars.packages`` when no cache exists;
- ``spark-submit --packages io.delta:delta-spark_2.13:4.0.1 jobs/x.py``: spark-submit already started
  the JVM with Delta on the classpath and owns master and jars, so we only add the Delta SQL confs;
- a standalone cluster: ``--master spark://host:port`` / ``SIM_SPARK_MASTER`` / config.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Mapping

from pyspark.sql import SparkSession

log = logging.getLogger(__name__)

DELTA_VERSION = "4.0.1"
DELTA_PACKAGE = f"io.delta:delta-spark_2.13:{DELTA_VERSION}"
DELTA_CONFS = {
    "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
    "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
}
# Safe defaults for a two-core machine; conf/pipeline.yaml and callers override them.
DEFAULT_CONFS = {
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.shuffle.partitions": "4",
    "spark.ui.enabled": "false",
    "spark.sql.ansi.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    # Delta's log replay uses 50 partitions by default: far too many tasks for our small logs on 2 cores.
    "spark.databricks.delta.snapshotPartitions": "4",
    # Delta tables that Petastorm reads must never carry deletion vectors (DESIGN.md "Data model").
    "spark.databricks.delta.properties.defaults.enableDeletionVectors": "false",
}


def cache_dir() -> Path:
    return Path(os.environ.get("SIM_CACHE", Path.home() / ".cache" / "sim-pipeline"))


def delta_jars() -> list[str]:
    """The Delta jars cached by ``make setup``; empty when setup has not fetched them."""
    d = cache_dir() / f"delta-{DELTA_VERSION}"
    jars = [d / f"delta-spark_2.13-{DELTA_VERSION}.jar", d / f"delta-storage-{DELTA_VERSION}.jar"]
    return [str(j) for j in jars] if all(j.is_file() for j in jars) else []


def under_spark_submit() -> bool:
    """True when spark-submit launched this Python process (it then owns the JVM, master and jars)."""
    return "PYSPARK_GATEWAY_PORT" in os.environ and "SIM_NOT_SPARK_SUBMIT" not in os.environ


def get_spark(app_name: str = "sim-pipeline", master: str | None = None,
              conf: Mapping[str, object] | None = None) -> SparkSession:
    """Return a SparkSession with Delta Lake enabled.

    Args:
        app_name: Spark application name.
        master: Spark master URL; defaults to ``$SIM_SPARK_MASTER``, then ``local[*]``. Ignored under
            spark-submit, whose ``--master`` wins.
        conf: extra Spark confs (``spark.*`` keys), e.g. ``spark.conf`` of conf/pipeline.yaml.
    """
    builder = SparkSession.builder.appName(app_name)
    confs: dict[str, str] = dict(DEFAULT_CONFS)
    confs.update({k: str(v) for k, v in (conf or {}).items()})
    confs.update(DELTA_CONFS)
    if not under_spark_submit():
        master = master or os.environ.get("SIM_SPARK_MASTER") or "local[*]"
        builder = builder.master(master)
        jars = delta_jars()
        if jars:
            confs.setdefault("spark.jars", ",".join(jars))
        else:
            log.warning("Delta jars not cached (run `make setup`); resolving %s with Ivy", DELTA_PACKAGE)
            confs.setdefault("spark.jars.packages", DELTA_PACKAGE)
    for key, value in confs.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(os.environ.get("SIM_SPARK_LOG_LEVEL", "WARN"))
    return spark


def spark_from_conf(cfg, app_name: str | None = None, master: str | None = None) -> SparkSession:
    """SparkSession from the ``spark`` block of the pipeline config (:class:`sim.config.PipelineConfig`)."""
    block = cfg.spark
    return get_spark(app_name=app_name or block.app_name,
                     master=master or os.environ.get("SIM_SPARK_MASTER") or block.master, conf=dict(block.conf))
