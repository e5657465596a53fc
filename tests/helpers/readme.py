"""The commands of README.md's fenced code blocks, and how the tests run them as a user would.

A user pastes a block into bash from the checkout root, without an activated venv. Here that checkout
root is a scratch copy (``sim/``, ``jobs/``, ``conf/`` copied, ``.venv`` linked) whose
``conf/pipeline.yaml`` describes a small synthetic log, so the commands run exactly as written on little
data; their outputs (``./lakehouse``, ``mlflow.db``, ``checkpoints/``) stay in the scratch directory.
Placeholders the README uses for the user's own data (``DIR``) are created there as real paths of that
name.
"""
from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"


@dataclass(frozen=True)
class Command:
    text: str      # as written, backslash continuations kept: what bash is given
    line: str      # continuations joined, the trailing comment dropped: what rules match
    section: str   # the README heading above the block
    lineno: int    # README line of the command's first line

    def __str__(self) -> str:
        return f"README.md:{self.lineno} ({self.section}): {self.line}"


@dataclass(frozen=True)
class Block:
    section: str
    lineno: int
    commands: tuple[Command, ...]


def _strip_comment(line: str) -> str:
    """``line`` without a trailing shell comment (a ``#`` after whitespace, outside quotes)."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def fenced_blocks(text: str) -> list[Block]:
    """The fenced code blocks of a Markdown text, each as its logical command lines."""
    blocks: list[Block] = []
    section, fence, body, start = "", None, [], 0
    for n, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if fence is None:
            if stripped.startswith("#") and not stripped.startswith("#!"):
                section = stripped.lstrip("#").strip()
            m = re.match(r"^(`{3,}|~{3,})", stripped)
            if m:
                fence, body, start = m.group(1), [], n
            continue
        if stripped.startswith(fence):
            blocks.append(Block(section, start, tuple(_commands(body, section))))
            fence = None
        else:
            body.append((n, raw))
    if fence is not None:
        raise ValueError(f"README.md:{start}: fenced block never closed")
    return blocks


def _commands(body: list[tuple[int, str]], section: str) -> list[Command]:
    out: list[Command] = []
    pending: list[str] = []
    first = 0
    for n, raw in body:
        if not pending and (not raw.strip() or raw.lstrip().startswith("#")):
            continue
        if not pending:
            first = n
        pending.append(raw)
        if raw.rstrip().endswith("\\"):
            continue
        text = "\n".join(pending)
        joined = " ".join(p.rstrip().rstrip("\\").strip() for p in pending)
        out.append(Command(text, _strip_comment(joined), section, first))
        pending = []
    if pending:
        raise ValueError(f"README.md:{first}: a command ends with a line continuation")
    return out


def readme_blocks(path: Path = README) -> list[Block]:
    return fenced_blocks(path.read_text())


def readme_commands(path: Path = README) -> list[Command]:
    return [c for b in readme_blocks(path) for c in b.commands]


# How each command is checked. A command no rule matches fails test_readme (the test must be taught
# how to check it). ``marker``: a regex the command's own output must contain when it ran fully.
@dataclass(frozen=True)
class Rule:
    kind: str       # run: run fully | make: dry run + --help of each recipe line | server: start, probe, stop
                    # | logs: run fully on tests/data/own_logs by tests/test_own_logs.py
    pattern: str    # regex matched at the start of Command.line
    marker: str | None = None


RULES = (
    Rule("make", r"make (demo|cluster-demo|serve-demo|test)\b"),
    Rule("server", r"\.venv/bin/mlflow ui\b"),
    Rule("run", r"\.venv/bin/python jobs/generate_logs\.py\b", r"generate_logs: behaviors=\d+"),
    Rule("run", r"\.venv/bin/python jobs/import_dataset\.py\b", r"import_dataset\.\w+: behaviors=\d+"),
    Rule("logs", r"\.venv/bin/python jobs/import_logs\.py\b", r"import_logs: behaviors=\d+"),
    Rule("run", r"\.venv/bin/python jobs/build_ubt\.py\b", r"BUILD_UBT_OK "),
    Rule("run", r"\.venv/bin/python jobs/build_samples\.py\b", r"BUILD_SAMPLES_OK "),
    # A shell variable the next command of its block uses: checked by that command.
    Rule("run", r"SPARK_HOME=\$\(\.venv/bin/python -c '[^']*'\)$"),
    Rule("run", r"DELTA_JARS=\S+$"),
    Rule("run", r"PYTHONPATH=\. PYSPARK_PYTHON=\.venv/bin/python \$SPARK_HOME/bin/spark-submit .*"
                r"jobs/build_ubt\.py\b", r"BUILD_UBT_OK "),
    Rule("run", r"\.venv/bin/horovodrun -np \d+ .*-m sim\.train\b", r"\w+ test \(epoch \d+ picked on validation\): auc="),
    Rule("run", r"\.venv/bin/python -m sim\.train\b", r"\w+ test \(epoch \d+ picked on validation\): auc="),
    Rule("run", r"\.venv/bin/python -m sim\.compare\b", r"\d\.\d{4} ± \d\.\d{4} \(n=\d+\)"),
)


def rule_for(cmd: Command) -> Rule | None:
    for r in RULES:
        if re.match(r.pattern, cmd.line):
            return r
    return None


def tilde_left_unexpanded(cmd: Command) -> list[str]:
    """Words of ``cmd`` with a ``~`` bash does not expand (only a word's first ``~``, or one right
    after ``=`` / ``:`` in an assignment, becomes $HOME): e.g. ``--jars ~/a.jar,~/b.jar``."""
    bad = []
    for word in cmd.line.split():
        rest = word[1:] if word.startswith("~") else word
        if re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", rest):
            rest = re.sub(r"^[A-Za-z_][A-Za-z0-9_]*=~?", "", rest)
            rest = re.sub(r":~", ":", rest)
        if "~" in rest:
            bad.append(word)
    return bad


# ----------------------------------------------------------------------------------- the user's shell
_DROP_ENV = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "SPARK_HOME", "SIM_SPARK_MASTER", "MLFLOW_TRACKING_URI",
             "SIM_NOT_SPARK_SUBMIT", "SIM_DUMP_WEIGHTS")
_DROP_PREFIX = ("PYSPARK_", "HOROVOD_", "PYTEST_", "MLFLOW_")


def user_env(**extra: str) -> dict[str, str]:
    """This process's environment as a user's shell has it: no activated venv (its ``bin`` left off
    PATH), no Spark / PySpark / Horovod / MLflow settings the test process may carry."""
    venv_bin = (ROOT / ".venv" / "bin").resolve()
    env = {k: v for k, v in os.environ.items()
           if k not in _DROP_ENV and not k.startswith(_DROP_PREFIX)}
    env["PATH"] = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep)
                                  if p and Path(p).resolve() != venv_bin)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    env.update(extra)
    return env


# JVMs that live a minute on tiny data (spark-submit, a job's CLI, an executor of the test cluster): the
# C1 JIT alone halves their CPU time (spark-submit and the JVMs pyspark launches read SPARK_SUBMIT_OPTS).
# The tests' long-lived in-process session keeps the default JIT: measured on test_ubt, test_samples and
# test_validation, C1 with whole-stage codegen off made it slower (350 s against 326 s).
from sim.local.cluster import SHORT_JVM_OPTS, stop_group  # noqa: E402 - defined once, by the local cluster


def scratch_env(root: Path, **extra: str) -> dict[str, str]:
    """:func:`user_env` for a :func:`scratch_checkout`: PYTHONPATH names the copy, as the venv's
    editable install names the real checkout (a path entry wins over that install's finder), and the
    JVMs start with :data:`SHORT_JVM_OPTS`."""
    return user_env(PYTHONPATH=str(root), SPARK_SUBMIT_OPTS=SHORT_JVM_OPTS, **extra)


def scratch_checkout(dst: Path, pipeline_overrides: list[str]) -> Path:
    """A checkout root to paste README commands into: ``sim/``, ``jobs/`` and ``conf/`` copied,
    ``.venv`` linked to the real one, ``conf/pipeline.yaml`` rewritten with ``pipeline_overrides``
    applied. The jobs read the ``conf/`` next to the ``sim`` package they import, which the venv's
    editable install takes from the real checkout: run commands with :func:`scratch_env`, which puts
    the copy first."""
    import yaml

    from sim.config import load_pipeline_conf
    dst.mkdir(parents=True, exist_ok=True)
    for d in ("sim", "jobs", "conf"):
        shutil.copytree(ROOT / d, dst / d, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    venv = ROOT / ".venv"
    if not (venv / "bin" / "python").exists():
        raise AssertionError(f"{venv} has no bin/python: run `make setup` first")
    (dst / ".venv").symlink_to(venv)
    cfg = load_pipeline_conf(ROOT / "conf" / "pipeline.yaml", pipeline_overrides)
    (dst / "conf" / "pipeline.yaml").write_text(
        "# conf/pipeline.yaml of the checkout, shrunk for the tests with:\n"
        + "".join(f"#   --set {o}\n" for o in pipeline_overrides)
        + yaml.safe_dump(cfg.model_dump(), sort_keys=False))
    return dst


def write_movielens(d: Path, users: int = 30, ratings_per_user: int = 12, items: int = 60) -> Path:
    """A small MovieLens-100k in its GroupLens layout (``u.data``, ``u.item``), dated inside the
    ml-100k range (1997-09-20 .. 1998-04-22) that the README's replay covers."""
    import random
    rng = random.Random(5)
    d.mkdir(parents=True, exist_ok=True)
    genres = 19
    with open(d / "u.item", "w", encoding="latin-1") as f:
        for i in range(1, items + 1):
            flags = ["0"] * genres
            flags[1 + i % (genres - 1)] = "1"
            f.write(f"{i}|Movie {i} (1995)|01-Jan-1995||http://example.org/{i}|{'|'.join(flags)}\n")
    first, last = 874_724_710, 893_286_638
    with open(d / "u.data", "w") as f:
        for u in range(1, users + 1):
            for ts in sorted(rng.randint(first, last) for _ in range(ratings_per_user)):
                f.write(f"{u}\t{rng.randint(1, items)}\t{rng.randint(1, 5)}\t{ts}\n")
    return d


# -------------------------------------------------------------------------------------------- running
@dataclass
class CommandRun:
    command: Command
    output: str = ""    # stdout + stderr of this command
    ran: bool = False   # the block reached it


@dataclass
class BlockRun:
    block: Block
    returncode: int | None = None
    seconds: float = 0.0
    commands: list[CommandRun] = field(default_factory=list)

    def describe(self) -> str:
        parts = [f"block README.md:{self.block.lineno} ({self.block.section}) exited {self.returncode} "
                 f"after {self.seconds:.0f}s"]
        for c in self.commands:
            parts.append(f"--- $ {c.command.line}\n{c.output[-6000:] if c.ran else '(not reached)'}")
        return "\n".join(parts)


_MARK = "@@readme-command "


def run_block(block: Block, cwd: Path, env: dict[str, str], timeout: float = 900) -> BlockRun:
    """Run a block's commands as written, in order, in one ``bash -e`` (so a block's shell variables
    reach its later commands); a marker line before each command splits the output per command."""
    script = ["set -eo pipefail"]
    for i, c in enumerate(block.commands):
        script += [f"echo '{_MARK}{i}'", f"echo '{_MARK}{i}' >&2", c.text]
    started = time.monotonic()
    proc = subprocess.Popen(["bash", "-c", "\n".join(script)], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        out = ""
    finally:
        stop_group(proc)  # what a command left running (a JVM, a rank), or all of it on a timeout
    if proc.returncode is None or proc.returncode < 0:
        out += f"\n(stopped after {timeout:.0f} s)"
    res = BlockRun(block, proc.returncode, time.monotonic() - started,
                   [CommandRun(c) for c in block.commands])
    current = None
    for line in out.splitlines(keepends=True):
        if line.startswith(_MARK):
            current = res.commands[int(line[len(_MARK):])]
            current.ran = True
            continue
        if current is not None:
            current.output += line
    return res


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True
