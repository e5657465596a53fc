"""The driver JVM's class-data archive (sim.adapters.jvm_archive): setup builds it, a driver that
get_spark launches maps it, and a change of the JVM or of a class-path jar retires it."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import ROOT, subprocess_env
from sim.adapters import jvm_archive

SCRIPT = """
import sys
from sim.adapters.spark import get_spark
s = get_spark("archive-check", master="local[1]", conf={"spark.driver.extraJavaOptions": f"-Xlog:class+load=info:file={sys.argv[1]}"})
assert s.range(3).count() == 3
s.stop()
"""


@pytest.mark.slow
def test_a_driver_that_get_spark_launches_maps_the_archive_setup_built(tmp_path):
    path = jvm_archive.archive_path()
    assert path.is_file(), f"no archive at {path}: `make setup` builds it"
    log = tmp_path / "classes.log"
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(log)], cwd=ROOT, env=subprocess_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    loaded = {line.split(" source: ")[0].split()[-1]: line.split(" source: ")[1]
              for line in log.read_text().splitlines() if " source: " in line}
    # Spark's and Scala's classes come from the archive, not from the jars.
    for cls in ("org.apache.spark.SparkContext", "org.apache.spark.sql.SparkSession", "scala.collection.immutable.List"):
        assert loaded.get(cls, "").startswith("shared objects file"), (cls, loaded.get(cls))
    assert "shared objects file (top)" in log.read_text()


def test_the_archive_follows_the_jvm_and_the_class_path_jars(tmp_path, monkeypatch):
    jars = [tmp_path / "a.jar", tmp_path / "b.jar"]
    for j in jars:
        j.write_bytes(b"x")
    monkeypatch.setattr(jvm_archive, "class_path_jars", lambda: list(jars))
    monkeypatch.setenv("SIM_CACHE", str(tmp_path / "cache"))
    key = jvm_archive.archive_key()
    assert jvm_archive.archive_key() == key
    os.utime(jars[1], ns=(1, 1))  # a jar replaced by another of the same size
    assert jvm_archive.archive_key() != key
    jars[1].write_bytes(b"xy")
    assert len({key, jvm_archive.archive_key()}) == 2
    # No archive for this key: the driver starts without one; with one, it maps it, unless turned off.
    assert jvm_archive.driver_options() == ""
    path = jvm_archive.archive_path()
    path.parent.mkdir(parents=True)
    path.write_bytes(b"archive")
    assert jvm_archive.driver_options().startswith(f"-XX:SharedArchiveFile={path} ")
    monkeypatch.setenv("SIM_JVM_ARCHIVE", "0")
    assert jvm_archive.driver_options() == ""
