"""Benchmark: SIM's two-stage cost against target attention over the whole long sequence.

The paper's point (Section 4, Figure 5) is that the ESU attends over K selected behaviors, so its cost
does not grow with the lifelong sequence length L, while DIN-style attention over all L behaviors does.
This measures forward+backward samples/s and peak memory on CPU (2 threads) for

- ``sim_hard`` with K = 200 (the hard search itself ran in Spark; the model sees K behaviors),
- ``sim_soft`` with K = 200 kept out of L (the soft search runs in the model, so it pays for L once),
- ``din_long``: DIN target attention over all L behaviors (the cost reference; not a paper model),
- ``mimn``: the MIMN memory written behavior by behavior over all L (a recurrence: L sequential steps),
  by the fused kernel (``sim.models.mimn_fused``); ``mimn_reference`` the same model written by the torch
  reference (``mimn_impl: reference``), so one run gives the fused write's speed-up (in the JSON),
- ``dien``: DIEN over a short sequence of L behaviors (its GRU + AUGRU are recurrences too; in the paper
  DIEN only ever reads the 14-day window, so it is measured as if that window held L behaviors),

at L = 1,000, 10,000 and 54,000 (the paper's longest sequences), batch 256, smaller where one run would
exceed ``--mem-budget-gb`` (the batch halves until the memory extrapolated from the model's shorter run
fits). Each measurement runs in its own subprocess so that the peak resident set size (``resource.getrusage(RUSAGE_SELF).ru_maxrss``, a high-water mark) belongs to that
configuration alone; the figure reported is the peak minus the RSS after building the model and the
batch, i.e. activations, gradients and allocator overhead of the measured steps. Seconds per step are
reported as wall time and as the process's CPU time (the latter is steadier on a shared machine).
The recurrent baselines run only up to ``--recurrent-max-length`` (MIMN's own design limit is about
1,000 behaviors; a Python-level loop over 54,000 steps is not a measurement worth waiting for).

Run: ``python bench/bench_models.py`` (several minutes), ``--quick`` (about a minute), or e.g.
``--lengths 1000 --models mimn dien`` for some models at one length. The last line is JSON: per model and
L, samples/s, CPU seconds per step and memory per sample, and sim_hard's throughput over each model's.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from typing import Any

from common import ROOT  # also puts the checkout's sim first on sys.path

MODELS = ("sim_hard", "sim_soft", "din_long", "mimn", "mimn_reference", "dien")
RECURRENT = ("mimn", "mimn_reference", "dien")


def _rss_mb() -> float:
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _batch(b: int, s: int, k: int, length: int, seed: int = 0) -> dict[str, Any]:
    import torch

    g = torch.Generator().manual_seed(seed)

    def seq(n: int) -> tuple[Any, Any, Any]:
        cats = torch.randint(1, 5_000, (b, n), generator=g)
        items = torch.randint(1, 10**9, (b, n), generator=g)
        gaps = torch.randint(1, 64, (b, n), generator=g)
        return items, cats, gaps

    batch: dict[str, Any] = {"item_id": torch.randint(1, 10**9, (b,), generator=g),
                             "category_id": torch.randint(1, 5_000, (b,), generator=g),
                             "label": torch.randint(0, 2, (b,), generator=g)}
    for name, n in (("short", s), ("hard", k), ("long", length)):
        batch[f"{name}_items"], batch[f"{name}_cats"], batch[f"{name}_gaps"] = seq(n)
    return batch


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Measure one configuration in this process; returns the figures."""
    import torch

    from sim.models.registry import MODELS as PARTS_OF, compose

    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    name, b = spec["model"], spec["batch"]
    # A catalog-sized item table (the model default, 1,009 rows, suits the demo's data): its dense
    # gradient is part of the memory measured, as in the figures of docs/RESULTS.md.
    cfg = {"soft_k": spec["k"], "item_buckets": 1_000_003}
    if name == "mimn_reference":
        name, cfg["mimn_impl"] = "mimn", "reference"
    # din_long (DIN attention over all of long_*) is a long-term part of no named model.
    short_part, long_part = ("din", "din_long") if name == "din_long" else PARTS_OF[name]
    model = compose(short_part, long_part, cfg, name=name)
    # DIEN reads only the short sequence: there L is the short sequence's length.
    short = spec["length"] if short_part == "dien" else spec["short"]
    batch = _batch(b, short, spec["k"], spec["length"])
    base = _rss_mb()

    def step() -> None:
        model.zero_grad(set_to_none=True)
        out = model(batch)
        model.loss(out, batch["label"]).backward()

    for _ in range(spec["warmup"]):
        step()
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(spec["steps"]):
        step()
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    peak = _rss_mb()
    return {**spec, "samples_per_s": b * spec["steps"] / elapsed,
            "sec_per_step": elapsed / spec["steps"], "cpu_sec_per_step": cpu / spec["steps"],
            "base_rss_mb": base, "peak_rss_mb": peak, "delta_mb": peak - base}


def run(spec: dict[str, Any]) -> dict[str, Any]:
    """Run ``worker`` in a fresh interpreter (ru_maxrss never goes down within a process)."""
    # Passive OpenMP waiting: on a shared CPU, spinning workers of one thread slow the other.
    env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)],
                          capture_output=True, text=True, cwd=ROOT, env=env)
    if proc.returncode != 0:
        return {**spec, "error": (proc.stderr.strip().splitlines() or [f"rc {proc.returncode}"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small run: batch 32, L 1,000 and 2,000")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--lengths", type=int, nargs="+", default=[1_000, 10_000, 54_000])
    p.add_argument("--k", type=int, default=200)
    p.add_argument("--short", type=int, default=50)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--mem-budget-gb", type=float, default=6.0,
                   help="largest extra memory one run over L may take; its batch shrinks to fit")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS,
                   help="models to measure (sim_hard, the reference of the ratios, always runs)")
    p.add_argument("--recurrent-max-length", type=int, default=1_000,
                   help="longest L at which the recurrent baselines (mimn, dien) run")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    if args.quick:
        args.batch, args.lengths, args.steps, args.warmup = 32, [1_000, 2_000], 2, 1

    common = {"k": args.k, "short": args.short, "steps": args.steps, "warmup": args.warmup,
              "threads": args.threads}
    lengths = sorted(args.lengths)
    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    # sim_hard never sees L (Spark did the search): one measurement serves every L.
    rows.append(run({**common, "model": "sim_hard", "length": lengths[0], "batch": args.batch}))
    # Memory over L grows linearly in L: each model's first run gives MB per sample per behavior.
    mb_per_sample_per_l: dict[str, float] = {}
    for length in lengths:
        for model in (m for m in MODELS if m in args.models and m != "sim_hard"):
            if model in RECURRENT and length > args.recurrent_max_length:
                notes.append(f"{model} at L={length:,}: skipped (--recurrent-max-length "
                             f"{args.recurrent_max_length:,})")
                continue
            batch = args.batch
            rate = mb_per_sample_per_l.get(model)
            if rate is not None:
                while batch > 8 and rate * length * batch / 1024 > args.mem_budget_gb:
                    batch //= 2
                if batch != args.batch:
                    notes.append(f"{model} at L={length:,}: batch {args.batch} would need about "
                                 f"{rate * length * args.batch / 1024:.1f} GB over the "
                                 f"{args.mem_budget_gb:g} GB budget, measured at batch {batch}")
            row = run({**common, "model": model, "length": length, "batch": batch})
            rows.append(row)
            if "error" not in row and rate is None:
                mb_per_sample_per_l[model] = max(row["delta_mb"], 1.0) / batch / length

    print(f"forward+backward on CPU, {args.threads} threads, emb_dim 8, K={args.k}, "
          f"short S={args.short}, {args.steps} timed steps after {args.warmup} warm-up, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'PASSIVE')}")
    print("memory = peak RSS (ru_maxrss) minus RSS after building model and batch, per subprocess")
    print("L of dien = its short sequence's length; K = behaviors the ESU attends to (sim_*)")
    print(f"{'model':<14} {'L':>7} {'K':>5} {'batch':>6} {'samples/s':>11} {'ms/sample':>10} "
          f"{'s/step':>8} {'cpu s/step':>10} {'mem MB':>9} {'MB/sample':>10}")
    for r in rows:
        shown_l = "any" if r["model"] == "sim_hard" else f"{r['length']:,}"
        shown_k = str(r["k"]) if r["model"].startswith("sim_") else "-"
        if "error" in r:
            print(f"{r['model']:<14} {shown_l:>7} {shown_k:>5} {r['batch']:>6}  failed: {r['error']}")
            continue
        print(f"{r['model']:<14} {shown_l:>7} {shown_k:>5} {r['batch']:>6} "
              f"{r['samples_per_s']:>11.1f} {1000 / r['samples_per_s']:>10.3f} "
              f"{r['sec_per_step']:>8.2f} {r['cpu_sec_per_step']:>10.2f} "
              f"{r['delta_mb']:>9.1f} {r['delta_mb'] / r['batch']:>10.3f}")
    hard = rows[0]
    print("ratios (sim_hard K=200 against each model over all L; memory per sample):")
    for r in rows:
        if r["model"] == "sim_hard" or "error" in r or "error" in hard:
            continue
        speed = hard["samples_per_s"] / r["samples_per_s"]
        mem = (hard["delta_mb"] / hard["batch"]) / max(r["delta_mb"] / r["batch"], 1e-9)
        print(f"  {r['model']:<9} L={r['length']:>6,}: sim_hard is {speed:.1f}x the throughput, "
              f"{mem:.2f}x the memory per sample")
    for note in notes:
        print("note:", note)
    summary: dict[str, Any] = {"bench": "bench_models", "threads": args.threads, "k": args.k, "short": args.short,
                               "steps": args.steps, "results": {}}
    for r in rows:
        key = f"{r['model']}@L={r['length']}"
        if "error" in r:
            summary["results"][key] = {"error": r["error"]}
            continue
        summary["results"][key] = {"batch": r["batch"], "samples_per_s": round(r["samples_per_s"], 1),
                                   "cpu_sec_per_step": round(r["cpu_sec_per_step"], 3),
                                   "mb_per_sample": round(r["delta_mb"] / r["batch"], 3)}
        if r is not hard and "error" not in hard:
            summary["results"][key]["sim_hard_speedup"] = round(hard["samples_per_s"] / r["samples_per_s"], 2)
    for length in lengths:
        fused, ref = (summary["results"].get(f"{m}@L={length}", {}) for m in ("mimn", "mimn_reference"))
        if "samples_per_s" in fused and "samples_per_s" in ref:
            ratio = fused["samples_per_s"] / ref["samples_per_s"]
            print(f"mimn fused write / reference at L={length:,}: {ratio:.1f}x samples/s")
            summary.setdefault("mimn_fused_speedup", {})[f"L={length}"] = round(ratio, 1)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
