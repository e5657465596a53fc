"""README.md as a user runs it: every command of its fenced code blocks, as written, and the
prerequisite check of ``make setup`` (scripts/setup.sh).

Each README command must match a rule of ``helpers.readme.RULES`` (test_every_readme_command_has_a_check
fails otherwise: a new command needs a check before it ships). How each is checked:

Run fully, exactly as written, each block pasted into ``bash`` (one shell per block, so its variables
reach its later lines) from the root of a scratch checkout: ``sim/``, ``jobs/`` and ``conf/`` copied,
``.venv`` linked, the venv not on PATH, no SPARK_HOME / PYSPARK_* / MLflow settings, PYTHONPATH naming
the copy (as the venv's editable install names the real checkout). Its ``conf/pipeline.yaml`` is the
checkout's with ``SMALL`` applied (24 users, 20 days of history, small windows and caps, Spark settings
for tiny data), so the commands run on little data; the JVMs start with the C1 JIT only
(``SPARK_SUBMIT_OPTS``); outputs stay in the scratch directory. "Public datasets" (its own input and
lakehouse) runs alongside the other blocks, which run in README order.
- "Running the jobs": generate_logs, build_ubt and build_samples (backfills); their success lines;
- the spark-submit block, with the Delta jars ``make setup`` cached (``$SIM_CACHE`` or
  ``~/.cache/sim-pipeline``; a ``~`` bash would not expand fails test_no_tilde_left_unexpanded first);
- "Public datasets": import_dataset of a small MovieLens-100k written to ``./DIR`` (the README's
  placeholder, created under that name; the counts of its summary line are checked: this is the
  import CLI's success test), then the count-mode replay over ml-100k's dates;
- "Training": ``.venv/bin/horovodrun -np 2``, ``sim.train --np 2`` and the one-process run, on the
  samples the jobs wrote for the dates of conf/experiments.yaml; each prints its test figures;
- "MLflow": ``mlflow ui`` started in the background, asked over HTTP for the runs of the training
  block (every expid, FINISHED, with its number of ranks), stopped in teardown. If port 5000 is taken on
  this machine it runs on a free port instead, with a warning saying so.

Checked without running them (``make demo`` takes 15 minutes, ``make test`` is the whole suite):
``make -n`` of the exact line must succeed, and every recipe line make would run
(``bash scripts/setup.sh``, ``python -m sim.demo``, ``python -m pytest -n 2 --dist loadfile``) must run
with ``--help`` appended, exit 0 and print its usage: the targets, programs and options exist as written.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import stat
import subprocess
import time
import urllib.error
import urllib.request
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import ROOT, free_port
from helpers.readme import (BlockRun, port_free, readme_blocks, readme_commands, rule_for, run_block,
                            scratch_checkout, scratch_env, stop_group, tilde_left_unexpanded, user_env,
                            write_movielens)

# conf/pipeline.yaml of the scratch checkout: the checkout's with these overrides.
SMALL = ["generator.users=24", "generator.history_days=20", "generator.mean_behaviors_per_user=40",
         "generator.max_behaviors_per_user=200", "generator.heavy_users=1",
         "generator.impressions_per_user_day=4", "generator.items=2000", "generator.categories=20",
         "generator.topics=4", "validation.max_reject_ratio=0.5",
         "windows.long_days=10", "windows.short_days=3", "windows.long_count=40", "windows.short_count=10",
         "caps.long_cap=40", "caps.hard_k=20", "caps.short_cap=10",
         # Tiny data: no whole-stage code generation, one partition (the JVMs: SHORT_JVM_OPTS).
         "spark.conf.spark.driver.memory=1g", "spark.conf.spark.sql.codegen.wholeStage=false",
         "spark.conf.spark.sql.shuffle.partitions=1", "spark.conf.spark.databricks.delta.snapshotPartitions=1"]
ML_USERS = 30  # users of the small MovieLens in ./DIR; one target each: two impressions per user
ML_RATINGS = 12  # ratings per user
# Blocks that read and write nothing the others do (./DIR, ./lakehouse_ml-100k): run alongside them.
ALONGSIDE = ("Public datasets",)

BLOCKS = readme_blocks()


def _kinds(block) -> set:
    return {r.kind if r else None for r in map(rule_for, block.commands)}


RUN_BLOCKS = [b for b in BLOCKS if _kinds(b) == {"run"}]
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
    assert len(SERVER_COMMANDS) == 1, "test_mlflow_ui_serves_the_training_runs knows one server command"


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


# ------------------------------------------------------------------------- the blocks, run as written
@pytest.fixture(scope="module")
def walkthrough(tmp_path_factory):
    """The scratch checkout after every runnable block ran: those of ALONGSIDE in a second worker, the
    others in README order, none after one of them failed. (root, {README line of a block: BlockRun})"""
    from sim.adapters.spark import delta_jars
    if not delta_jars():
        pytest.fail("the Delta jars are not cached: run `make setup`")
    if any(rule_for(c) is None for c in readme_commands()):
        pytest.fail("README commands without a check: see test_every_readme_command_has_a_check")
    root = scratch_checkout(tmp_path_factory.mktemp("readme") / "checkout", SMALL)
    write_movielens(root / "DIR", users=ML_USERS, ratings_per_user=ML_RATINGS)
    env = scratch_env(root)
    runs: dict[int, BlockRun] = {}
    with ThreadPoolExecutor(1) as pool:
        alongside = {b.lineno: pool.submit(run_block, b, root, env, 1200) for b in RUN_BLOCKS
                     if b.section in ALONGSIDE}
        failed = False
        for block in RUN_BLOCKS:
            if block.lineno not in alongside:
                runs[block.lineno] = BlockRun(block) if failed else run_block(block, root, env, timeout=1200)
                failed = failed or runs[block.lineno].returncode != 0
        runs.update({k: f.result() for k, f in alongside.items()})
    for b in RUN_BLOCKS:
        print(f"README.md:{b.lineno} ({b.section}): exit {runs[b.lineno].returncode} "
              f"in {runs[b.lineno].seconds:.0f} s")
    return root, runs


@pytest.mark.slow
@pytest.mark.timeout(3600)  # the walkthrough's Spark jobs and trainings, on a machine that may be busy
@pytest.mark.parametrize("lineno", [b.lineno for b in RUN_BLOCKS],
                         ids=[f"{b.section}@{b.lineno}" for b in RUN_BLOCKS])
def test_readme_block_runs_as_written(walkthrough, lineno):
    res = walkthrough[1][lineno]
    assert res.returncode is not None, "not run: an earlier block failed"
    assert res.returncode == 0, res.describe()
    for c in res.commands:
        marker = rule_for(c.command).marker
        assert c.ran and (marker is None or re.search(marker, c.output)), (
            f"{c.command}: no line matching {marker!r} in its output\n{res.describe()}")


def _rows_by_date(table: Path) -> dict[str, int]:
    from deltalake import DeltaTable
    dts = DeltaTable(str(table)).to_pyarrow_table(columns=["dt"]).column("dt").to_pylist()
    return {d: dts.count(d) for d in sorted(set(dts))}


@pytest.mark.slow
@pytest.mark.timeout(3600)  # the walkthrough's Spark jobs and trainings, on a machine that may be busy
def test_jobs_write_the_samples_the_training_commands_read(walkthrough):
    import yaml
    root, runs = walkthrough
    assert all(r.returncode == 0 for r in runs.values()), "a block failed: see test_readme_block_runs_as_written"
    base = yaml.safe_load((root / "conf" / "experiments.yaml").read_text())["Base"]
    first, last = str(base["train_dates"][0]), str(base["test_dates"][1])
    samples, impressions = _rows_by_date(root / "lakehouse" / "samples"), _rows_by_date(root / "lakehouse" / "impressions")
    wanted = {d: n for d, n in impressions.items() if first <= d <= last}
    assert len(wanted) >= 3 and samples == wanted  # one sample per impression of every training date
    ml = root / "lakehouse_ml-100k"
    assert sum(_rows_by_date(ml / "samples").values()) == sum(_rows_by_date(ml / "impressions").values()) \
        == 2 * ML_USERS
    # The import's summary line reports what it read and wrote (the CLI's failure on too many rejects:
    # test_importers.test_import_cli_fails_on_too_many_rejects).
    (out,) = [c.output for r in runs.values() for c in r.commands
              if re.match(r"\.venv/bin/python jobs/import_dataset\.py ", c.command.line)]
    m = re.search(r"import_dataset\.movielens: behaviors=(\d+) .*impressions=(\d+) .*"
                  r"movielens:ratings read=(\d+) accepted=(\d+) rejected=(\d+)", out)
    assert m, out
    behaviors, impressions, read, accepted, rejected = map(int, m.groups())
    assert (impressions, read) == (2 * ML_USERS, ML_USERS * ML_RATINGS) and read == accepted + rejected
    assert behaviors == sum(_rows_by_date(ml / "behaviors").values()) > 0


# ------------------------------------------------------------------------------------------ mlflow ui
def _training_runs() -> dict[str, int]:
    """expid -> ranks, from the README's training commands."""
    out = {}
    for b in RUN_BLOCKS:
        for c in b.commands:
            m = re.search(r"-m sim\.train .*--expid (\S+)", c.line)
            if m:
                n = re.search(r"(?:^|\s)--?np (\d+)", c.line)
                out[m.group(1)] = int(n.group(1)) if n else 1
    return out


@pytest.fixture
def mlflow_ui(walkthrough):
    """The README's ``mlflow ui`` command started in the scratch checkout; yields its base URL and
    stops the server (its whole process group) afterwards."""
    root, runs = walkthrough
    assert all(r.returncode == 0 for r in runs.values()), "a block failed: see test_readme_block_runs_as_written"
    (cmd,) = SERVER_COMMANDS
    text = cmd.text
    port = int(m.group(1)) if (m := re.search(r"--port (\d+)", cmd.line)) else 5000
    if not port_free(port):
        new = free_port()
        warnings.warn(f"port {port} is taken on this machine: ran `{cmd.line}` with --port {new}")
        text = re.sub(r"--port \d+", f"--port {new}", text) if m else f"{text} --port {new}"
        port = new
    log = open(root / "mlflow-ui.log", "w")
    proc = subprocess.Popen(["bash", "-c", text], cwd=root, env=scratch_env(root), stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while True:
            if proc.poll() is not None:
                pytest.fail(f"`{cmd.line}` exited {proc.returncode}:\n{(root / 'mlflow-ui.log').read_text()[-4000:]}")
            try:
                with urllib.request.urlopen(url + "/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"`{cmd.line}` did not answer on {url} within 240 s:\n"
                            f"{(root / 'mlflow-ui.log').read_text()[-4000:]}")
            time.sleep(1)
        yield url
    finally:
        stop_group(proc)
        log.close()


def _api(url: str, path: str, body: dict | None = None) -> dict:
    req = urllib.request.Request(url + path, data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.load(r)


@pytest.mark.slow
@pytest.mark.timeout(3600)  # the walkthrough's Spark jobs and trainings, on a machine that may be busy
def test_mlflow_ui_serves_the_training_runs(mlflow_ui):
    with urllib.request.urlopen(mlflow_ui + "/", timeout=60) as r:
        assert r.status == 200 and "<html" in r.read().decode().lower()
    expected = _training_runs()
    assert expected, "no sim.train command in the README"
    exp = _api(mlflow_ui, "/api/2.0/mlflow/experiments/get-by-name?experiment_name=sim-synthetic")
    runs = _api(mlflow_ui, "/api/2.0/mlflow/runs/search",
                {"experiment_ids": [exp["experiment"]["experiment_id"]], "max_results": 100})["runs"]
    got = {}
    for r in runs:
        params = {p["key"]: p["value"] for p in r["data"].get("params", [])}
        metrics = {m["key"] for m in r["data"].get("metrics", [])}
        got[r["info"]["run_name"]] = (r["info"]["status"], int(params.get("horovod.size", 0)), "auc" in metrics)
    assert got == {expid: ("FINISHED", ranks, True) for expid, ranks in expected.items()}


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
    cache = tmp_path / "cache"
    jars = cache / f"delta-{pins['delta-spark']}"
    jars.mkdir(parents=True)
    for name in (f"delta-spark_2.13-{pins['delta-spark']}.jar", f"delta-storage-{pins['delta-spark']}.jar"):
        (jars / name).touch()
    cpu_wheels = cache / f"horovod-{pins['horovod']}-torch-{pins['torch']}"
    cpu_wheels.mkdir()
    (cpu_wheels / f"horovod-{pins['horovod']}-cp311-cp311-linux_x86_64.whl").touch()
    tools = {"mvn", "cmake", "gcc", "cc", "g++", "c++", "clang", "clang++"}

    def check(name: str, **env: str) -> subprocess.CompletedProcess:
        (tmp_path / name).mkdir()
        return run_setup(tmp_path / name, "--check", without=tools, cache=cache, CUDA_HOME=str(cuda),
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
