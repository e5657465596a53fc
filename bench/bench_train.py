"""Steady-state training samples/s per process of every model of conf/experiments.yaml, on one process
and under ``horovodrun -np 2``, on full-length sequences.

    python bench/bench_train.py [--models din sim_hard ...] [--steps 40] [--budget 15] [--quick]

Rows: the worst case, the one that sizes a machine. Every row has a long sequence of exactly
``caps.long_cap`` = 1,000 real behaviors, a hard-search sequence of ``caps.hard_k`` = 200 and a short one
of ``caps.short_cap`` = 50 (the demo's rows are far shorter: long median ~160, so the loader cuts their
batches to a few hundred, and training on them is faster than here). Ids are drawn in numpy and the rows
written as packed Parquet files (the samples table's format, :mod:`sim.formats.packing`).

What runs is the project's training, not a copy of it: for each model,
:func:`sim.training.loop.setup` (Horovod, the model from ``sim.models``, Adam wrapped by Horovod's
distributed optimizer so gradients are averaged over the ranks as ``sim.train`` does, the learning-rate
schedule, the :class:`~sim.training.loader.ShardedLoader` over the files), then
:func:`sim.training.loop.run_epoch`. The loader's first ``POOL`` batches of the rank are taken into memory
and the epochs replay them (:class:`Replay`), so the timed steps are training alone (the loader is
``bench/bench_loader.py``'s). An epoch of ``--warmup`` steps comes first (allocations, first Horovod
cycles), then one of ``--steps`` timed steps, fewer (at least 3) when the warm-up's pace says they would
take more than ``--budget`` seconds. ``mimn_reference`` is ``mimn`` with ``model.mimn_impl=reference``
(its memory written by the torch reference instead of the fused kernel, seconds per step: it gets
``--slow-steps``); with both rows the run prints the fused write's speed-up over the reference, at one
process and per process at ``-np 2``, measured in the same run.
Every model at both process counts took 12 minutes here (machine at load 9).

Threads: one process uses the machine's cores (``train.threads`` = cores, 2 here); under ``-np 2`` each
rank uses cores / 2 = 1 thread, so the two ranks do not compete for a core. ``OMP_WAIT_POLICY=PASSIVE``.
Reported per model: samples/s of the one process; per process at ``-np 2`` (the mean of the ranks'
rates); the total at ``-np 2`` (the sum); their ratio (total at 2 / one process); and samples per
CPU-second of a rank at ``-np 2`` (its process CPU time, Horovod's threads included), the per-core rate
``docs/CAPACITY.md`` uses (the JSON also has the one process's). The last line is JSON with all of it.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from common import ROOT  # first: it puts the checkout's sim on sys.path
from sim.formats.packing import PACKED, SEQUENCES, seq_columns

CONFIG = ROOT / "conf" / "experiments.yaml"
CAPS = {"short": 50, "hard": 200, "long": 1000}  # conf/pipeline.yaml caps: short_cap, hard_k, long_cap
# Rows that are an experiment with overrides: name -> (expid, overrides).
VARIANTS = {"mimn_reference": ("mimn", ("model.mimn_impl=reference",))}
SLOW = ("mimn_reference",)  # seconds per step at L = 1,000: timed over --slow-steps
POOL = 8  # distinct batches a rank replays
TAG = "bench_train_rank0 "  # prefix of the workers' result lines


def experiment_ids() -> list[str]:
    from sim.config.experiment import load_yaml
    return [k for k in load_yaml(CONFIG) if k != "Base"]


def row_names() -> list[str]:
    """The experiments, each followed by its variants."""
    out = []
    for e in experiment_ids():
        out += [e, *(v for v, (expid, _) in VARIANTS.items() if expid == e)]
    return out


# ------------------------------------------------------------------------------------------- the rows
def full_length_table(n: int, seed: int = 0) -> pa.Table:
    """``n`` rows of the training columns with every sequence at its cap, packed as the samples table
    stores them (one binary value per row and field: the elements as big-endian int32)."""
    rng = np.random.default_rng(seed)
    cats = rng.integers(1, 201, n)
    cols = {"impression_id": pa.array(np.arange(n, dtype=np.int64)),
            "user_id": pa.array(rng.integers(1, 3001, n)), "item_id": pa.array(rng.integers(1, 50_001, n)),
            "category_id": pa.array(cats), "ts": pa.array(1_719_500_000 + np.arange(n, dtype=np.int64)),
            "label": pa.array((rng.random(n) < 0.3).astype(np.int32)),
            "long_len": pa.array(np.full(n, CAPS["long"], dtype=np.int32)),
            "d_category": pa.array(rng.integers(0, 180, n).astype(np.int32))}
    for s in SEQUENCES:
        cap = CAPS[s]
        items, cat_col, gaps = seq_columns(s)
        offsets = pa.py_buffer((np.arange(n + 1, dtype=np.int32) * cap * PACKED.itemsize).tobytes())
        # Hard search keeps the candidate's category only.
        values = {items: rng.integers(1, 50_001, (n, cap)),
                  cat_col: np.repeat(cats, cap).reshape(n, cap) if s == "hard" else rng.integers(1, 201, (n, cap)),
                  gaps: rng.integers(1, 64, (n, cap))}
        for c, v in values.items():
            data = pa.py_buffer(v.astype(PACKED).tobytes())
            cols[c] = pa.BinaryArray.from_buffers(pa.binary(), n, [None, offsets, data])
    return pa.table(cols)


def write_rows(out: Path, rows: int, file_rows: int = 2048) -> list[tuple[str, int]]:
    """Full-length rows in Parquet files of ``file_rows`` rows (one row group each) under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for i, lo in enumerate(range(0, rows, file_rows)):
        n = min(file_rows, rows - lo)
        path = out / f"part-{i}.parquet"
        pq.write_table(full_length_table(n, seed=i), path, compression="snappy", row_group_size=n)
        files.append((str(path), n))
    return files


# ---------------------------------------------------------------------------------------- measurement
class Replay:
    """Stands in for the session's loader in :func:`~sim.training.loop.run_epoch`: ``steps`` batches an
    epoch, cycling over batches already in memory."""

    def __init__(self, batches: list[dict], steps: int):
        self.batches, self.steps_per_epoch = batches, steps

    def epoch(self, epoch: int = 0):
        return itertools.islice(itertools.cycle(self.batches), self.steps_per_epoch)


def measure(expid: str, files: list[tuple[str, int]], steps: int, warmup: int = 2, batch_size: int = 256,
            threads: int = 0, workdir: str | None = None, budget_s: float | None = None,
            min_steps: int = 3, overrides: tuple[str, ...] = ()) -> dict:
    """One model's training on this rank (a Horovod job of any size, or this process alone): samples/s
    over ``steps`` optimizer steps after ``warmup`` of them, and samples per CPU-second of the process.

    With ``budget_s``, fewer timed steps when the warm-up's seconds per step (the mean over the ranks, so
    every rank takes the same number of steps) say ``steps`` would take longer, but at least
    ``min_steps``."""
    import torch

    from sim.adapters import hvd
    from sim.config.experiment import load_experiment
    from sim.training.experiment import DataManifest
    from sim.training.loop import run_epoch, setup

    with tempfile.TemporaryDirectory(dir=workdir, prefix="bench_train_") as tmp:
        cfg = load_experiment(CONFIG, expid, [f"lakehouse={tmp}", f"train.checkpoint_dir={tmp}/ckpt",
                                              f"train.batch_size={batch_size}", f"train.threads={threads}",
                                              *overrides])
        manifest = DataManifest(str(Path(files[0][0]).parent), 0, {s: list(files) for s in ("train", "valid", "test")})
        s = setup(cfg, manifest, resume=False)
        s.loader = Replay(list(itertools.islice(s.loader.epoch(0), POOL)), warmup)
        _, warm = run_epoch(s, 0)
        if budget_s is not None:
            per_step = hvd.allreduce_mean(warm / warmup, name=f"bench.step.{expid}")
            steps = max(min(steps, min_steps), min(steps, int(budget_s / per_step)))
        s.loader.steps_per_epoch = steps
        rows = sum(len(b["label"]) for b in s.loader.epoch(1))
        cpu = time.process_time()
        loss, seconds = run_epoch(s, 1)
        cpu = time.process_time() - cpu
    return {"model": expid, "samples_per_s": rows / seconds, "samples_per_cpu_s": rows / cpu, "steps": steps,
            "rows": rows, "seconds": seconds, "cpu_s": cpu, "threads": torch.get_num_threads(), "loss": loss}


def worker(spec: dict) -> None:
    """One process of a run (``python bench_train.py --worker SPEC``, alone or under horovodrun): every
    model of ``spec`` in turn; rank 0 prints one line per model with every rank's figures."""
    import torch

    from sim.adapters import hvd

    hvd.init()
    for name in spec["models"]:
        slow = name in SLOW
        expid, overrides = VARIANTS.get(name, (name, ()))
        r = measure(expid, [tuple(f) for f in spec["files"]], spec["slow_steps"] if slow else spec["steps"],
                    spec["slow_warmup"] if slow else spec["warmup"], spec["batch_size"], spec["threads"],
                    budget_s=spec["budget_s"], overrides=tuple(overrides))
        r["model"] = name
        per_rank = hvd.allgather(torch.tensor([[r["samples_per_s"], r["samples_per_cpu_s"]]], dtype=torch.float64),
                                 name=f"bench.{name}")
        if hvd.rank() == 0:
            r.update(np=hvd.size(), rank_samples_per_s=per_rank[:, 0].tolist(),
                     rank_samples_per_cpu_s=per_rank[:, 1].tolist())
            print(TAG + json.dumps(r), flush=True)


def run(np_: int, spec: dict) -> dict[str, dict]:
    """``worker`` on ``np_`` processes (one: plain python, as ``sim.train`` runs without ``--np``);
    the rank-0 lines by model."""
    cmd = [sys.executable, "-u", __file__, "--worker", json.dumps(spec)]
    if np_ > 1:
        cmd = [str(Path(sys.executable).parent / "horovodrun"), "-np", str(np_), "-H", f"localhost:{np_}",
               "--gloo", "--gloo-timeout-seconds", "600", *cmd]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    out = {}
    with tempfile.TemporaryFile("w+") as err:
        with subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=err, text=True) as proc:
            for line in proc.stdout:
                i = line.find(TAG)  # horovodrun prefixes the ranks' lines with "[0]<stdout>:"
                if i >= 0:
                    r = json.loads(line[i + len(TAG):])
                    out[r["model"]] = r
                    print(f"  np {np_}: {r['model']}: {np.mean(r['rank_samples_per_s']):,.0f} samples/s per process "
                          f"({r['steps']} steps, {r['seconds']:.1f}s)", flush=True)
        if proc.returncode != 0:
            err.seek(0)
            sys.stderr.write(err.read()[-4000:])
            raise SystemExit(f"np {np_} failed (rc {proc.returncode}) after {sorted(out)}")
    return out


def main() -> None:
    models = row_names()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=models, choices=models)
    p.add_argument("--steps", type=int, default=40, help="timed steps per model (at most; see --budget)")
    p.add_argument("--budget", type=float, default=15.0,
                   help="seconds of timed steps per model: fewer steps (at least 3) when the warm-up says "
                        "--steps would take longer; 0 = always --steps")
    p.add_argument("--warmup", type=int, default=3, help="steps before the timed ones")
    p.add_argument("--slow-steps", type=int, default=2, help=f"timed steps of {', '.join(SLOW)}")
    p.add_argument("--slow-warmup", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--np", type=int, nargs="+", default=[1, 2], help="process counts to run")
    p.add_argument("--quick", action="store_true", help="a smoke run: batch 128, up to 5 timed steps or 3 s (mimn_reference 1)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(json.loads(args.worker))
        return
    if args.quick:
        args.steps, args.warmup, args.slow_steps, args.batch_size, args.budget = 5, 1, 1, 128, 3.0
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="bench_train_rows_") as tmp:
        files = write_rows(Path(tmp), POOL * args.batch_size * max(args.np))
        spec = {"files": files, "models": args.models, "steps": args.steps, "warmup": args.warmup,
                "budget_s": args.budget or None,
                "slow_steps": args.slow_steps, "slow_warmup": args.slow_warmup, "batch_size": args.batch_size}
        res = {n: run(n, {**spec, "threads": max(1, cores // n)}) for n in args.np}
    load = os.getloadavg()[0]
    one, two = res.get(1, {}), res.get(max(args.np), {}) if max(args.np) > 1 else {}
    n2 = max(args.np)
    print(f"training samples/s, full-length rows (long {CAPS['long']}, hard {CAPS['hard']}, short {CAPS['short']}), "
          f"batch {args.batch_size}, up to {args.steps} timed steps or {args.budget:g}s after {args.warmup} "
          f"({', '.join(SLOW)}: "
          f"{args.slow_steps} after {args.slow_warmup}); {cores} cores: 1 process with {max(1, cores // 1)} "
          f"threads, {n2} processes with {max(1, cores // n2)}; load average {load:.1f}")
    print(f"{'model':<18}{'1 proc':>10}{f'per proc np{n2}':>15}{f'total np{n2}':>13}{'ratio':>8}"
          f"{f'per CPU-s np{n2}':>16}")
    figures = {}
    for m in args.models:
        a, b = one.get(m), two.get(m)
        f = {"np1": a["samples_per_s"] if a else None, "per_cpu_s_np1": a["samples_per_cpu_s"] if a else None,
             "steps_np1": a["steps"] if a else None}
        if b:
            f.update(per_process=float(np.mean(b["rank_samples_per_s"])), total=float(np.sum(b["rank_samples_per_s"])),
                     per_cpu_s=float(np.mean(b["rank_samples_per_cpu_s"])), steps_np2=b["steps"])
            f["ratio"] = f["total"] / f["np1"] if a else None
        figures[m] = {k: (round(v, 2 if k == "ratio" else 1) if isinstance(v, float) else v) for k, v in f.items()}

        def cell(k: str, width: int, fmt: str = ",.0f") -> str:
            v = f.get(k)
            return f"{format(v, fmt) if v is not None else '-':>{width}}"
        print(f"{m:<18}{cell('np1', 10)}{cell('per_process', 15)}{cell('total', 13)}{cell('ratio', 8, '.2f')}"
              f"{cell('per_cpu_s', 16)}")
    speedup = {}
    fused, ref = figures.get("mimn"), figures.get("mimn_reference")
    if fused and ref:
        # Same run, same rows: the fused MIMN write's samples/s over the reference's.
        for k in ("np1", "per_process"):
            if fused.get(k) and ref.get(k):
                speedup[k] = round(fused[k] / ref[k], 1)
        print("mimn fused write / reference: " + ", ".join(f"{k} {v:.1f}x" for k, v in speedup.items()))
    print(json.dumps({"bench": "bench_train", "batch_size": args.batch_size, "steps": args.steps, "budget_s": args.budget,
                      "slow_steps": args.slow_steps, "cores": cores, "np": args.np, "load_avg": round(load, 1),
                      "samples_per_s": figures, "mimn_fused_speedup": speedup}))


if __name__ == "__main__":
    main()
