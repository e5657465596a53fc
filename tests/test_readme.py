"""The prerequisite check of ``make setup`` (scripts/setup.sh): a missing tool is named with its package
before anything is installed, and tools needed only to build what is cached are not asked for."""
from __future__ import annotations

import os
import re
import stat
import subprocess
from pathlib import Path

import pytest

from conftest import ROOT
from helpers.readme import user_env


# ------------------------------------------------------------------------ make setup's prerequisites
SETUP = ROOT / "scripts" / "setup.sh"


def _pins() -> dict[str, str]:
    text = (ROOT / "constraints.txt").read_text()
    return {k: re.search(rf"^{k}==(\S+)$", text, re.M).group(1) for k in ("horovod", "torch", "delta-spark")}


def path_without(bin_dir: Path, names: set[str]) -> str:
    """A PATH with every program of this PATH except ``names``: one directory of links."""
    bin_dir.mkdir()
    for d in os.environ.get("PATH", "").split(os.pathsep):
        if not os.path.isdir(d):
            continue
        for e in os.scandir(d):
            if e.name in names or (bin_dir / e.name).exists() or (bin_dir / e.name).is_symlink():
                continue
            if e.is_file() and os.access(e.path, os.X_OK):
                (bin_dir / e.name).symlink_to(e.path)
    return str(bin_dir)


def run_setup(tmp_path: Path, *args: str, without: set[str] = frozenset(), cache: Path | None = None,
              **env: str) -> subprocess.CompletedProcess:
    e = user_env(PATH=path_without(tmp_path / "bin", set(without)), SIM_CACHE=str(cache or tmp_path / "cache"),
                 VENV=str(tmp_path / "venv"), **env)
    for k in ("JAVA_HOME", "CC", "CXX", "PYTHON"):
        if k not in env:
            e.pop(k, None)
    return subprocess.run(["bash", str(SETUP), *args], env=e, capture_output=True, text=True, timeout=120)


def test_setup_check_passes_on_this_machine():
    proc = subprocess.run(["bash", str(SETUP), "--check"], env=user_env(), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"prerequisites: Python 3\.11\.\d+, Java \d+", proc.stdout)


@pytest.mark.parametrize("without, named, package", [
    ({"python3.11"}, "Python 3.11: no 'python3.11' on PATH", "python3.11"),
    ({"java"}, "Java 17: no java on PATH", "openjdk-17-jdk-headless"),
    ({"mvn"}, "Maven (mvn)", "maven"),
    ({"g++", "c++", "clang++"}, "a C++ compiler (g++)", "g++"),
    ({"cmake"}, "cmake: builds Horovod", "cmake"),
], ids=["python3.11", "java", "maven", "c++", "cmake"])
def test_setup_names_a_missing_prerequisite(tmp_path, without, named, package):
    """Nothing cached yet (empty SIM_CACHE, no venv): every prerequisite is needed."""
    proc = run_setup(tmp_path, "--check", without=without)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"[setup]   - {named}" in proc.stderr, proc.stderr
    install = re.search(r"apt-get install -y (.*)", proc.stderr)
    assert install and package in install.group(1).split(), proc.stderr
    assert not (tmp_path / "venv").exists() and not (tmp_path / "cache").exists()


def test_setup_stops_before_installing_anything(tmp_path):
    """The full setup (not --check) with Java missing stops at the check: no uv, no venv, no cache."""
    proc = run_setup(tmp_path, without={"java"})
    assert proc.returncode == 1 and "Java 17: no java on PATH" in proc.stderr, proc.stdout + proc.stderr
    assert "installing" not in proc.stdout and "creating" not in proc.stdout
    assert not (tmp_path / "venv").exists() and not (tmp_path / "cache").exists()


def test_setup_names_a_java_too_old(tmp_path):
    fake = tmp_path / "jdk11" / "bin"
    fake.mkdir(parents=True)
    (fake / "java").write_text('#!/bin/sh\necho \'openjdk version "11.0.22" 2024-01-16\' >&2\n')
    (fake / "java").chmod(stat.S_IRWXU)
    proc = run_setup(tmp_path, "--check", JAVA_HOME=str(fake.parent))
    assert proc.returncode == 1 and re.search(r"Java 17: \S+/jdk11/bin/java is version 11;", proc.stderr), proc.stderr


def test_setup_needs_no_build_tools_once_their_products_are_cached(tmp_path):
    """With the Delta jars and the Horovod wheel cached, Maven, the compilers and cmake are not needed."""
    pins = _pins()
    cache = tmp_path / "cache"
    jars = cache / f"delta-{pins['delta-spark']}"
    jars.mkdir(parents=True)
    for name in (f"delta-spark_2.13-{pins['delta-spark']}.jar", f"delta-storage-{pins['delta-spark']}.jar"):
        (jars / name).touch()
    wheels = cache / f"horovod-{pins['horovod']}-torch-{pins['torch']}"
    wheels.mkdir()
    (wheels / f"horovod-{pins['horovod']}-cp311-cp311-linux_x86_64.whl").touch()
    tools = {"mvn", "cmake", "gcc", "cc", "g++", "c++", "clang", "clang++"}
    proc = run_setup(tmp_path, "--check", without=tools, cache=cache)
    assert proc.returncode == 0, proc.stderr
    # The same PATH without those products cached names all four.
    uncached = tmp_path / "uncached"
    uncached.mkdir()
    proc = run_setup(uncached, "--check", without=tools)
    assert proc.returncode == 1
    for named in ("Maven (mvn)", "a C compiler (gcc)", "a C++ compiler (g++)", "cmake:"):
        assert named in proc.stderr, proc.stderr
