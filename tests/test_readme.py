"""README.md's commands: each has a check, and those not run by tests/test_end_to_end.py (which runs
every runnable block as written) are checked here, with the prerequisite check of ``make setup``
(scripts/setup.sh).

Each README command must match a rule of ``helpers.readme.RULES`` (test_every_readme_command_has_a_check
fails otherwise: a new command needs a check before it ships). ``make demo`` takes 15 minutes and
``make test`` is the whole suite, so they are checked without running them: ``make -n`` of the exact
line must succeed, and every recipe line make would run (``bash scripts/setup.sh``, ``python -m
sim.local.demo``, ``python -m pytest -n 2 --dist loadfile``) must run with ``--help`` appended, exit 0 and
print its usage: the targets, programs and options exist as written.
"""
from __future__ import annotations

import os
import re
import shlex
import stat
import struct
import subprocess
from pathlib import Path

import pytest

from conftest import ROOT
from helpers.readme import readme_blocks, readme_commands, rule_for, tilde_left_unexpanded, user_env

BLOCKS = readme_blocks()


def _kinds(block) -> set:
    return {r.kind if r else None for r in map(rule_for, block.commands)}


MAKE_COMMANDS = [c for b in BLOCKS for c in b.commands if _kinds(b) == {"make"}]
SERVER_COMMANDS = [c for b in BLOCKS for c in b.commands if _kinds(b) == {"server"}]


# ------------------------------------------------------------------------------ every command covered
def test_every_readme_command_has_a_check():
    commands = readme_commands()
    assert len(commands) >= 10, "README.md: fenced blocks not found"
    unknown = [str(c) for c in commands if rule_for(c) is None]
    assert not unknown, ("README commands tests/test_readme.py does not know how to check; add a rule to "
                         "tests/helpers/readme.py RULES and a check here:\n" + "\n".join(unknown))
    mixed = [f"README.md:{b.lineno}: {sorted(_kinds(b))}" for b in BLOCKS if len(_kinds(b)) != 1]
    assert not mixed, f"a block mixes commands that are checked differently: {mixed}"
    assert len(SERVER_COMMANDS) == 1, "test_end_to_end.test_mlflow_ui_serves_the_training_runs knows one server command"


def test_no_tilde_left_unexpanded():
    """bash turns only a word's leading ``~`` into $HOME: ``--jars ~/a.jar,~/b.jar`` hands Spark a
    literal ``~/b.jar`` (NoClassDefFoundError: io/delta/storage/LogStore)."""
    bad = {str(c): w for c in readme_commands() if (w := tilde_left_unexpanded(c))}
    assert not bad, bad


def test_readme_parser_joins_continuations_and_drops_comments():
    from helpers.readme import fenced_blocks
    text = "# S\n```\nrun a \\\n  --b 'x # y'   # note\n\n# a comment line\nrun c\n```\nprose `x`\n"
    (block,) = fenced_blocks(text)
    assert block.section == "S" and [c.line for c in block.commands] == ["run a --b 'x # y'", "run c"]
    assert block.commands[0].text == "run a \\\n  --b 'x # y'   # note" and block.commands[1].lineno == 7


# ------------------------------------------------------------------------------------ make commands
@pytest.mark.parametrize("cmd", MAKE_COMMANDS, ids=lambda c: c.line)
def test_make_command_parses_and_its_recipe_programs_run(cmd):
    argv = shlex.split(cmd.line)
    assert argv[0] == "make"
    dry = subprocess.run(["make", "-n", *argv[1:]], cwd=ROOT, env=user_env(), capture_output=True,
                         text=True, timeout=60)
    assert dry.returncode == 0, f"{cmd}: make -n failed\n{dry.stderr}"
    recipe = [line for line in dry.stdout.splitlines() if line.strip() and not line.startswith("make")]
    assert len(recipe) >= 2, f"{cmd}: expected setup and the target's own line, got {recipe}"
    assert recipe[0] == "bash scripts/setup.sh", recipe
    for line in recipe:
        proc = subprocess.run(["bash", "-c", f"{line} --help"], cwd=ROOT, env=user_env(),
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0 and "usage:" in proc.stdout.lower(), (
            f"{cmd}: `{line} --help` exited {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")


# ------------------------------------------------------------------------ make setup's prerequisites
SETUP = ROOT / "scripts" / "setup.sh"


def _pins() -> dict[str, str]:
    text = (ROOT / "constraints.txt").read_text()
    return {k: re.search(rf"^{k}==(\S+)$", text, re.M).group(1) for k in ("horovod", "torch", "delta-spark", "pyspark")}


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
    for k in ("JAVA_HOME", "CC", "CXX", "PYTHON", "SIM_REDIS_SERVER"):
        if k not in env:
            e.pop(k, None)
    return subprocess.run(["bash", str(SETUP), *args], env=e, capture_output=True, text=True, timeout=120)


def test_setup_installed_compiled_bytecode_and_pyspark_from_its_cached_wheel():
    """The venv the tests run in, as setup made it: the heavy packages' bytecode compiled at install
    (processes never write it where PYTHONDONTWRITEBYTECODE is set, so each would compile them again), and
    pyspark (an sdist on PyPI) from the wheel setup builds once per version into its cache."""
    import importlib.util
    import mlflow
    import pyspark
    import torch

    from sim.adapters.spark import cache_dir
    for module in (torch, mlflow, pyspark):
        pyc = Path(importlib.util.cache_from_source(module.__file__))
        assert pyc.is_file(), f"{module.__name__}: no bytecode"
        # current: it records its source's time (bytecode hard-linked from setup's cache must match the
        # sources uv linked; a mismatch would make every process compile the module again)
        recorded = struct.unpack("<I", pyc.read_bytes()[8:12])[0]
        assert recorded == int(os.stat(module.__file__).st_mtime) & 0xFFFFFFFF, f"{module.__name__}: stale bytecode"
    version = _pins()["pyspark"]
    assert pyspark.__version__ == version
    assert list((cache_dir() / f"pyspark-{version}").glob(f"pyspark-{version}-*.whl")), "run `make setup`"


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
    ({"redis-server", "apt-get"}, "redis-server: the serving store's server", "redis-server"),
], ids=["python3.11", "java", "maven", "c++", "cmake", "redis-server"])
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


BUILD_TOOLS = {"mvn", "cmake", "gcc", "cc", "g++", "c++", "clang", "clang++"}


def cached_products(cache: Path) -> Path:
    """A cache directory holding (empty stand-ins for) everything setup builds or fetches: the Delta,
    hadoop-aws and s3proxy jars and the CPU Horovod wheel."""
    pins = _pins()
    jars = cache / f"delta-{pins['delta-spark']}"
    jars.mkdir(parents=True)
    for name in (f"delta-spark_2.13-{pins['delta-spark']}.jar", f"delta-storage-{pins['delta-spark']}.jar"):
        (jars / name).touch()
    wheels = cache / f"horovod-{pins['horovod']}-torch-{pins['torch']}"
    wheels.mkdir()
    (wheels / f"horovod-{pins['horovod']}-cp311-cp311-linux_x86_64.whl").touch()
    hadoop_aws, sdk, s3proxy = re.search(r"HADOOP_AWS_VER=(\S+); AWS_SDK_VER=(\S+); S3PROXY_VER=(\S+)\n",
                                         SETUP.read_text()).groups()
    s3a = cache / f"hadoop-aws-{hadoop_aws}-sdk-{sdk}"
    s3a.mkdir()
    for name in (f"hadoop-aws-{hadoop_aws}.jar", f"bundle-{sdk}.jar"):
        (s3a / name).touch()
    (cache / f"s3proxy-{s3proxy}").mkdir()
    (cache / f"s3proxy-{s3proxy}" / ".complete").touch()
    return cache


def test_setup_needs_no_build_tools_once_their_products_are_cached(tmp_path):
    """With the jars (Delta, hadoop-aws, s3proxy) and the Horovod wheel cached, Maven, the compilers and
    cmake are not needed."""
    cache = cached_products(tmp_path / "cache")
    proc = run_setup(tmp_path, "--check", without=BUILD_TOOLS, cache=cache)
    assert proc.returncode == 0, proc.stderr
    # The same PATH without those products cached names all four.
    uncached = tmp_path / "uncached"
    uncached.mkdir()
    proc = run_setup(uncached, "--check", without=BUILD_TOOLS)
    assert proc.returncode == 1
    for named in ("Maven (mvn)", "a C compiler (gcc)", "a C++ compiler (g++)", "cmake:"):
        assert named in proc.stderr, proc.stderr


def test_setup_builds_horovod_for_gpus_where_cuda_and_nccl_are_found(tmp_path):
    """A CUDA toolkit (a stand-in nvcc) and NCCL (its header and library) make setup build Horovod with
    its GPU operations, cached apart: the cached CPU wheel does not stand in for it, so the build tools
    are needed again; once a GPU wheel is cached they are not. SIM_HOROVOD_GPU=0 keeps the CPU build."""
    pins = _pins()
    cuda, nccl = tmp_path / "cuda", tmp_path / "nccl"
    (cuda / "bin").mkdir(parents=True)
    (cuda / "bin" / "nvcc").write_text('#!/bin/sh\necho "Cuda compilation tools, release 12.4, V12.4.131"\n')
    (cuda / "bin" / "nvcc").chmod(stat.S_IRWXU)
    (nccl / "include").mkdir(parents=True)
    (nccl / "include" / "nccl.h").touch()
    (nccl / "lib").mkdir()
    (nccl / "lib" / "libnccl.so").touch()
    cache = cached_products(tmp_path / "cache")  # the CPU wheel among them
    cpu_wheels = cache / f"horovod-{pins['horovod']}-torch-{pins['torch']}"

    def check(name: str, **env: str) -> subprocess.CompletedProcess:
        (tmp_path / name).mkdir()
        return run_setup(tmp_path / name, "--check", without=BUILD_TOOLS, cache=cache, CUDA_HOME=str(cuda),
                         NCCL_HOME=str(nccl), **env)

    proc = check("gpu")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    gpu_cache = re.search(rf"({re.escape(str(cache))}/horovod-{re.escape(pins['horovod'])}-torch-"
                          rf"{re.escape(pins['torch'])}-cuda[0-9.]+-nccl)\b", proc.stderr)
    assert gpu_cache and "cmake: builds Horovod" in proc.stderr, proc.stderr
    gpu_wheels = Path(gpu_cache.group(1))
    gpu_wheels.mkdir()
    (gpu_wheels / f"horovod-{pins['horovod']}-cp311-cp311-linux_x86_64.whl").touch()
    proc = check("gpu_cached")
    assert proc.returncode == 0, proc.stderr
    assert "horovod: GPU (NCCL) and CPU (Gloo) build" in proc.stdout and str(gpu_wheels) in proc.stdout
    proc = check("cpu", SIM_HOROVOD_GPU="0")
    assert proc.returncode == 0, proc.stderr
    assert f"horovod: CPU (Gloo) build (SIM_HOROVOD_GPU=0), wheel cached in {cpu_wheels}\n" in proc.stdout
