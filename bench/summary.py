"""One table of the benchmarks' figures, from the JSON line each benchmark ends its output with.

    python bench/summary.py --run [--quick] [--only bench_train bench_loader] [--out bench_out]
    python bench/summary.py bench_out/bench_train.log bench_out/bench_loader.log

With ``--run`` the benchmarks of ``bench/`` run one after the other (their output shown as it comes and
kept in ``--out/<name>.log``; with ``--quick`` each gets its own ``--quick`` flag), then the table is
printed; with log files, the table of those. The table has one row per figure: the benchmark, the
figure's key (nested keys joined with dots) and its value. A benchmark whose output does not end with a
JSON object, or that failed, is named, and the exit status is 1.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from sim.adapters.tracking import flatten  # {'a': {'b': 1}} -> {'a.b': 1}, as runs' params are logged

BENCH = Path(__file__).resolve().parent
# The order `make bench` runs them in: the Spark benchmarks, then the loader and the models.
BENCHES = ("bench_data", "bench_nightly", "bench_samples_join", "bench_loader", "bench_models", "bench_train",
           "bench_serving", "bench_jvm")


class MissingFigures(ValueError):
    """A benchmark's output does not end with its JSON line of figures."""


def last_json(text: str, name: str) -> dict:
    """The JSON object on the last non-empty line of a benchmark's output ``text``."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        raise MissingFigures(f"{name}: no output, so no JSON line of figures")
    last = lines[-1].strip()
    try:
        fig = json.loads(last)
    except json.JSONDecodeError:
        fig = None
    if not isinstance(fig, dict):
        raise MissingFigures(f"{name}: its output does not end with a JSON object of figures; last line: "
                             f"{last[:200]!r}")
    return fig


def show(v: object) -> str:
    if isinstance(v, bool) or v is None:
        return str(v).lower()
    if isinstance(v, float):
        return f"{v:,.3g}" if abs(v) < 100 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    text = json.dumps(v) if isinstance(v, list) else str(v)
    return text if len(text) <= 60 else text[:57] + "..."


def table(figures: dict[str, dict]) -> str:
    rows = [(name, k, show(v)) for name, fig in figures.items() for k, v in flatten(fig).items() if k != "bench"]
    w0 = max([len("benchmark"), *(len(r[0]) for r in rows)])
    w1 = max([len("figure"), *(len(r[1]) for r in rows)])
    out = [f"{'benchmark':<{w0}}  {'figure':<{w1}}  value", f"{'-' * w0}  {'-' * w1}  -----"]
    out += [f"{a:<{w0}}  {b:<{w1}}  {c}" for a, b, c in rows]
    return "\n".join(out)


def run_bench(name: str, quick: bool, log: Path) -> tuple[int, str]:
    """Run ``bench/<name>.py``, its stdout shown line by line and written to ``log``."""
    cmd = [sys.executable, "-u", str(BENCH / f"{name}.py"), *(["--quick"] if quick else [])]
    print(f"== {' '.join(cmd[2:])}", flush=True)
    lines = []
    with subprocess.Popen(cmd, cwd=BENCH.parent, stdout=subprocess.PIPE, text=True) as proc, open(log, "w") as f:
        for line in proc.stdout:
            sys.stdout.write(line)
            f.write(line)
            lines.append(line)
    return proc.returncode, "".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("logs", nargs="*", help="captured outputs (<bench name>.log); not with --run")
    p.add_argument("--run", action="store_true", help="run the benchmarks first")
    p.add_argument("--quick", action="store_true", help="with --run: each benchmark's --quick")
    p.add_argument("--only", nargs="+", choices=BENCHES, help="with --run: these benchmarks only")
    p.add_argument("--out", default="bench_out", help="with --run: where the logs go")
    args = p.parse_args(argv)
    outputs: dict[str, str] = {}
    failed: list[str] = []
    if args.run:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        for name in args.only or BENCHES:
            rc, text = run_bench(name, args.quick, out / f"{name}.log")
            outputs[name] = text
            if rc != 0:
                failed.append(f"{name}: exit status {rc}")
    else:
        if not args.logs:
            p.error("give log files, or --run")
        outputs = {Path(f).stem: Path(f).read_text() for f in args.logs}
    figures = {}
    for name, text in outputs.items():
        try:
            figures[name] = last_json(text, name)
        except MissingFigures as e:
            failed.append(str(e))
    print()
    print(table(figures))
    for f in failed:
        print(f"FAILED {f}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
