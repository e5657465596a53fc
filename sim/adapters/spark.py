"""The one place a SparkSession is built: Delta extensions and catalog, the cached Delta jars.

Three ways a job runs, with no code change between them:
- ``python jobs/x.py`` or tests: we launch the JVM, with the Delta jars that ``make setup`` cached
  (``$SIM_CACHE/delta-<version>``), or ``spark.jars.packages`` when no cache exists;
- ``spark-submit --packages io.delta:delta-spark_2.13:4.0.1 jobs/x.py``: spark-submit already started
  the JVM with Delta on the classpath and owns master and jars, so we only add the Delta SQL confs;
- a standalone cluster: ``--master spark://host:port`` / ``SIM_SPARK_MASTER`` / config.

A lakehouse on S3 (``s3a://bucket/prefix``) needs Hadoop's S3A connector: the hadoop-aws jar of
pyspark's Hadoop and the AWS SDK bundle it was built against, cached by ``make setup`` and put on the
driver's and executors' class path (under spark-submit, pass them with ``--jars``). Endpoint and credentials are settings,
never code: ``spark.hadoop.fs.s3a.*`` in ``spark.conf``, else derived from ``AWS_*`` variables
(:func:`sim.adapters.storage.spark_s3a_conf`).

Settings that cannot apply are warned about, naming the key, the value in force and how to set it
(:func:`warn_ignored_settings`): Spark reads some settings only when the driver JVM starts
(``spark.driver.memory``, ``spark.driver.extraJavaOptions``, ``spark.jars*``, ...), which spark-submit or
an earlier session in this process has done already; and a SparkSession that already exists keeps its
context's settings (the master, executors, static SQL settings), taking only runtime SQL settings.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Mapping

from pyspark import SparkContext
from pyspark.sql import SparkSession

from sim.adapters import jvm_archive, storage

log = logging.getLogger(__name__)

DELTA_VERSION = "4.0.1"
DELTA_PACKAGE = f"io.delta:delta-spark_2.13:{DELTA_VERSION}"
# hadoop-aws must match pyspark's Hadoop (pyspark/jars/hadoop-client-api-<version>.jar); the SDK bundle is
# the one that hadoop-aws release was built against. scripts/setup.sh caches the same versions.
HADOOP_AWS_VERSION = "3.4.1"
AWS_SDK_VERSION = "2.24.6"
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


# Settings Spark reads only when the driver JVM starts (spark-submit's launcher, or PySpark's, which hands
# them to spark-submit).
JVM_LAUNCH_SETTINGS = ("spark.driver.memory", "spark.driver.cores", "spark.driver.extraJavaOptions",
                       "spark.driver.extraClassPath", "spark.driver.extraLibraryPath", "spark.jars",
                       "spark.jars.packages", "spark.jars.repositories", "spark.jars.excludes", "spark.jars.ivy",
                       "spark.jars.ivySettings")
# The spark-submit options of settings that have one (any setting also goes as --conf key=value).
SUBMIT_OPTIONS = {"spark.master": "--master", "spark.driver.memory": "--driver-memory",
                  "spark.driver.cores": "--driver-cores", "spark.driver.extraJavaOptions": "--driver-java-options",
                  "spark.driver.extraClassPath": "--driver-class-path",
                  "spark.driver.extraLibraryPath": "--driver-library-path", "spark.jars": "--jars",
                  "spark.jars.packages": "--packages", "spark.jars.repositories": "--repositories",
                  "spark.jars.excludes": "--exclude-packages", "spark.executor.memory": "--executor-memory",
                  "spark.executor.cores": "--executor-cores"}
# A session's name is only a label: another one than the running session's is not worth a warning.
_LABELS = ("spark.app.name",)


def cache_dir() -> Path:
    return Path(os.environ.get("SIM_CACHE", Path.home() / ".cache" / "sim-pipeline"))


def delta_jars() -> list[str]:
    """The Delta jars cached by ``make setup``; empty when setup has not fetched them."""
    d = cache_dir() / f"delta-{DELTA_VERSION}"
    jars = [d / f"delta-spark_2.13-{DELTA_VERSION}.jar", d / f"delta-storage-{DELTA_VERSION}.jar"]
    return [str(j) for j in jars] if all(j.is_file() for j in jars) else []


def s3a_jars() -> list[str]:
    """hadoop-aws and the AWS SDK bundle cached by ``make setup`` (Spark's ``s3a://``); empty when not
    cached."""
    d = cache_dir() / f"hadoop-aws-{HADOOP_AWS_VERSION}-sdk-{AWS_SDK_VERSION}"
    jars = [d / f"hadoop-aws-{HADOOP_AWS_VERSION}.jar", d / f"bundle-{AWS_SDK_VERSION}.jar"]
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
    confs.update(storage.spark_s3a_conf())  # AWS_* variables, below what the caller's conf says
    confs.update({k: str(v) for k, v in (conf or {}).items()})
    confs.update(DELTA_CONFS)
    if not under_spark_submit():
        confs["spark.master"] = master or os.environ.get("SIM_SPARK_MASTER") or "local[*]"
        jars = delta_jars()
        if not jars:
            log.warning("Delta jars not cached (run `make setup`); resolving %s with Ivy", DELTA_PACKAGE)
            confs.setdefault("spark.jars.packages", DELTA_PACKAGE)
        else:
            confs.setdefault("spark.jars", ",".join(jars))
        # The S3A jars go on the JVMs' class path rather than into spark.jars: spark.jars are copied
        # into every session's (and every executor's) scratch directory, 560 MB each time here. So
        # the executors of a cluster need them at the same path (true on one machine; elsewhere
        # install them on the nodes or pass them with --jars).
        s3a = s3a_jars()
        for key in ("spark.driver.extraClassPath", "spark.executor.extraClassPath") if s3a else ():
            confs[key] = os.pathsep.join([p for p in (confs.get(key), *s3a) if p])
        # The class-data archive of `make setup` (sim.adapters.jvm_archive), before the caller's options.
        if archive := jvm_archive.driver_options():
            key = "spark.driver.extraJavaOptions"
            confs[key] = " ".join(o for o in (archive, confs.get(key)) if o)
    for key, value in confs.items():
        builder = builder.config(key, value)
    # Whether the driver JVM runs already (spark-submit started it, or an earlier session of this process)
    # and whether a SparkContext does: then some of ``confs`` cannot apply (warn_ignored_settings).
    jvm_started = SparkContext._gateway is not None or "PYSPARK_GATEWAY_PORT" in os.environ
    context_running = SparkContext._active_spark_context is not None
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(os.environ.get("SIM_SPARK_LOG_LEVEL", "WARN"))
    warn_ignored_settings(spark, confs, jvm_started=jvm_started, context_running=context_running)
    return spark


def ignored_settings(spark: SparkSession, requested: Mapping[str, str], jvm_started: bool,
                     context_running: bool) -> list[str]:
    """The ``requested`` settings that ``spark`` does not run with, one line each naming the key, the
    value in force and how to set it.

    ``jvm_started``: the driver JVM ran before the session was asked for, so the settings read at its
    start (:data:`JVM_LAUNCH_SETTINGS`) hold what it started with (its system properties).
    ``context_running``: a SparkSession existed; it takes the runtime settings of the SQL session
    (``spark.sql.*`` that are not static, Delta's ``spark.databricks.*``) and keeps the rest: the static
    SQL settings and those its SparkContext read when it was created (master, executors, UI, Hadoop).
    A value unset where it is in force means Spark's default."""
    jvm = spark.sparkContext._jvm
    context_conf = spark.sparkContext.getConf()
    out = []
    for key, want in requested.items():
        option = SUBMIT_OPTIONS.get(key)
        submit = f"{option} {want} or --conf {key}={want}" if option else f"--conf {key}={want}"
        if key in JVM_LAUNCH_SETTINGS and jvm_started:
            have = jvm.java.lang.System.getProperty(key)
            how = (f"Spark reads it when the driver JVM starts: pass it to spark-submit ({submit}), or set "
                   "it in the process's first SparkSession")
        elif context_running and key not in _LABELS:
            if jvm.org.apache.spark.sql.internal.SQLConf.isStaticConfigKey(key):
                have = spark.conf.get(key, None)
            elif spark.conf.isModifiable(key) or key.startswith(("spark.sql.", "spark.databricks.")):
                continue  # the session's own settings: applied to the running session
            else:
                have = context_conf.get(key, None)
            how = f"a running SparkSession keeps its own: stop it first, or pass it to spark-submit ({submit})"
        else:
            continue
        if not _same_setting(key, have, want):
            shown = "unset (Spark's default)" if have is None else have
            out.append(f"{key}={want} is not applied; in force: {shown}. {how}")
    return out


def _same_setting(key: str, have: str | None, want: str) -> bool:
    """Whether the value in force is the one asked for; spark-submit records the jars of ``spark.jars``
    as ``file://`` URIs."""
    if have is None or key != "spark.jars":
        return have == want

    def paths(value: str) -> list[str]:
        return [j.strip().removeprefix("file://").removeprefix("file:") for j in value.split(",") if j.strip()]
    return paths(have) == paths(want)


def warn_ignored_settings(spark: SparkSession, requested: Mapping[str, str], jvm_started: bool,
                          context_running: bool) -> None:
    """Log a warning per requested setting ``spark`` does not run with (:func:`ignored_settings`)."""
    for line in ignored_settings(spark, requested, jvm_started, context_running):
        log.warning("Spark setting %s", line)


def spark_from_conf(cfg, job: str | None = None, master: str | None = None) -> SparkSession:
    """SparkSession from the ``spark`` block of the pipeline config (:class:`sim.config.PipelineConfig`),
    named ``<spark.app_name>-<job>`` (:func:`app_name`)."""
    block = cfg.spark
    return get_spark(app_name=app_name(cfg, job),
                     master=master or os.environ.get("SIM_SPARK_MASTER") or block.master, conf=dict(block.conf))


def app_name(cfg, job: str | None = None) -> str:
    """The Spark application name of ``job``: ``spark.app_name`` of the pipeline config as its prefix,
    so the jobs of one pipeline are told apart yet found together in a cluster's application list."""
    return f"{cfg.spark.app_name}-{job}" if job else cfg.spark.app_name
