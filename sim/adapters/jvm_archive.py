"""The driver JVM's start: a class-data sharing (CDS) archive of the classes a pipeline job loads.

Each job's driver JVM loads and verifies about 20,000 classes of Spark, Scala and Delta before it does any
work; on small inputs (the demo, a nightly day of a small team, the tests) that is most of a job's CPU.
A dynamic CDS archive (JDK 13+, ``-XX:ArchiveClassesAtExit``) holds those classes parsed and verified;
a JVM started with ``-XX:SharedArchiveFile`` maps it instead of loading them again (``bench/bench_jvm.py``
measures the difference).

``make setup`` builds the archive once (:mod:`sim.local.jvm_archive`: the generator, both UBT builds and
the samples job on a few users, in a JVM that writes the archive when it exits) into ``$SIM_CACHE/jvm-cds/``, keyed
by the JVM, pyspark's version and the identity (size, mtime) of every jar on the driver's class path,
so a new venv whose jars are the same files (setup's installer links them from its cache) reuses it.
:func:`get_spark <sim.adapters.spark.get_spark>` adds :func:`driver_options` to the driver JVM it
launches; under ``spark-submit`` pass them yourself: ``--driver-java-options "$(python -m
sim.local.jvm_archive options)"``, and to executors that run on this machine with the same class path
(the local cluster's, :meth:`sim.local.cluster.LocalCluster.spark_submit`) in
``spark.executor.extraJavaOptions``.

The JVM checks the archive against its class path itself: a driver whose class path does not start
with the archive's (another ``--driver-class-path``, another ``SPARK_CONF_DIR``) or whose jars changed
starts as it would without it. Its CDS messages are turned off, so that fallback is silent.
``SIM_JVM_ARCHIVE=0`` turns the archive off. Classes that Spark loads from ``spark.jars`` (Delta's) come
through its own class loader and are not archived; those of the class path (Spark, Scala, Hadoop) are.
"""
from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

# A JVM that cannot use the archive starts without it, saying nothing.
QUIET = "-Xshare:auto -Xlog:cds=off -Xlog:cds+dynamic=off"


def _java() -> Path:
    home = os.environ.get("JAVA_HOME")
    java = Path(home) / "bin" / "java" if home else shutil.which("java")
    return Path(os.path.realpath(java)) if java else Path("java")


def class_path_jars() -> list[Path]:
    """The jars on the class path of a driver that get_spark launches: the S3A jars (its
    ``spark.driver.extraClassPath``, when cached), then pyspark's own."""
    import pyspark
    from sim.adapters.spark import s3a_jars
    own = sorted((Path(pyspark.__file__).parent / "jars").glob("*.jar"))
    return [Path(j) for j in s3a_jars()] + own


def archive_key() -> str:
    """What the archive depends on: the JVM binary, and each class-path jar's name, size and mtime."""
    h = hashlib.sha256()
    for path in (_java(), *class_path_jars()):
        try:
            st = path.stat()
            h.update(f"{path.name}:{st.st_size}:{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{path}:missing\n".encode())
    return h.hexdigest()[:16]


def archive_path() -> Path:
    import pyspark
    from sim.adapters.spark import cache_dir
    return cache_dir() / "jvm-cds" / f"spark-{pyspark.__version__}-{archive_key()}.jsa"


def enabled() -> bool:
    return os.environ.get("SIM_JVM_ARCHIVE", "1") not in ("0", "false", "no", "off")


def driver_options() -> str:
    """The driver JVM options that map the archive; empty when it is not built or turned off."""
    if not enabled():
        return ""
    path = archive_path()
    return f"-XX:SharedArchiveFile={path} {QUIET}" if path.is_file() else ""
