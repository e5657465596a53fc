"""The main job end to end on the embedded synthetic data (``make demo``):

1. generate the synthetic lifelong logs (behaviors, impressions) as Delta tables;
2. backfill the User Behavior Tree up to the day before the last impression day;
3. build the point-in-time samples of every impression day;
4. train DIN, Avg-Pooling Long DIN, SIM hard, SIM soft and SIM soft + time with ``horovodrun -np 2``;
5. print the comparison (paper Tables 2 and 6) and write its figures.

Each stage runs the same command a user would (spark jobs, ``python -m sim.train --np 2``) as a
subprocess, so the demo exercises exactly what the README documents.
"""
from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

from sim.config import PROJECT_ROOT, load_pipeline_conf

log = logging.getLogger("sim.demo")

DEMO_MODELS = ("din", "avgpool_long_din", "sim_hard", "sim_soft", "sim_soft_time")


def _day(d: str, delta: int) -> str:
    return (dt.date.fromisoformat(d) + dt.timedelta(days=delta)).isoformat()


def plan(cfg: dict) -> dict[str, str]:
    """Dates of each stage from the generator config: impressions on the last ``impression_days``."""
    g = cfg["generator"]
    end, n = str(g["end_date"]), int(g["impression_days"])
    if n < 2:
        raise SystemExit("the demo needs generator.impression_days >= 2 (train days + one eval day)")
    first_imp = _day(end, -(n - 1))
    return {"ubt_from": _day(first_imp, -1), "ubt_to": _day(end, -1), "samples_from": first_imp,
            "samples_to": end, "train_from": first_imp, "train_to": _day(end, -1), "eval": end}


def _stage(i: int, total: int, title: str, cmd: list[str], env: dict) -> float:
    print(f"\n=== [{i}/{total}] {title}\n$ {' '.join(cmd)}", flush=True)
    started = time.perf_counter()
    rc = subprocess.call(cmd, cwd=PROJECT_ROOT, env=env)
    took = time.perf_counter() - started
    if rc != 0:
        raise SystemExit(f"demo stage '{title}' failed with exit code {rc}")
    print(f"=== [{i}/{total}] {title}: done in {took:.0f}s", flush=True)
    return took


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sim.demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--lakehouse", default=str(PROJECT_ROOT / "lakehouse"))
    p.add_argument("--models", default=",".join(DEMO_MODELS), help="comma-separated model names")
    p.add_argument("--np", type=int, default=2, help="horovodrun processes per training run")
    p.add_argument("--experiment", default="sim-demo", help="MLflow experiment of the demo runs")
    p.add_argument("--tracking-uri", default=f"sqlite:///{PROJECT_ROOT / 'mlflow.db'}")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="pipeline config override for the Spark jobs (e.g. generator.users=100)")
    p.add_argument("--train-set", action="append", default=[], metavar="KEY=VALUE",
                   help="experiment config override for training (e.g. train.epochs=1)")
    args = p.parse_args(argv)

    lakehouse = str(Path(args.lakehouse).resolve())
    cfg = load_pipeline_conf(overrides=args.overrides, lakehouse=lakehouse)
    d = plan(cfg)
    py = sys.executable
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")]),
               OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "PASSIVE"))
    spark_args = ["--lakehouse", lakehouse] + [a for o in args.overrides for a in ("--set", o)]
    models = [m for m in args.models.split(",") if m]
    total = 4 + len(models)
    times = {}
    started = time.perf_counter()
    times["generate"] = _stage(1, total, "generate synthetic logs",
                               [py, "jobs/generate_logs.py", *spark_args], env)
    times["ubt"] = _stage(2, total, f"User Behavior Tree {d['ubt_from']}..{d['ubt_to']}",
                          [py, "jobs/build_ubt.py", "--date", d["ubt_to"], "--backfill", d["ubt_from"],
                           *spark_args], env)
    times["samples"] = _stage(3, total, f"samples {d['samples_from']}..{d['samples_to']}",
                              [py, "jobs/build_samples.py", "--date", d["samples_to"], "--backfill",
                               d["samples_from"], *spark_args], env)
    train_sets = [f"lakehouse={lakehouse}", f"experiment={args.experiment}",
                  f"tracking_uri={args.tracking_uri}", f"train_dates=[{d['train_from']},{d['train_to']}]",
                  f"eval_dates=[{d['eval']},{d['eval']}]", *args.train_set]
    for i, model in enumerate(models, start=4):
        cmd = [py, "-m", "sim.train", "--config", "conf/experiments.yaml", "--expid", model,
               "--np", str(args.np)]
        for s in train_sets:
            cmd += ["--set", s]
        times[f"train {model}"] = _stage(i, total, f"train {model} (horovodrun -np {args.np})", cmd, env)
    times["compare"] = _stage(total, total, "compare runs",
                              [py, "-m", "sim.compare", "--experiment", args.experiment,
                               "--tracking-uri", args.tracking_uri,
                               "--out", str(PROJECT_ROOT / "compare_out")], env)
    print(f"\ndemo finished in {time.perf_counter() - started:.0f}s: "
          + ", ".join(f"{k} {v:.0f}s" for k, v in times.items()))
    print(f"MLflow: .venv/bin/mlflow ui --backend-store-uri {args.tracking_uri}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
