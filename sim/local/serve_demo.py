"""Online scoring on the demo's lakehouse (``make serve-demo``), after ``make demo``:

1. export UBT(T - 1) of the test day T into the serving store, with the behaviors of T through the
   append path (``jobs/export_ubt.py --date T-1 --append-day T``);
2. start the store (a redis-server of its own on 127.0.0.1 where one is available: ``make setup``
   provides it; else the embedded SQLite file) and the scoring service (``python -m sim.serving.service``)
   with the demo's logged model (``--model``, default sim_hard; the latest run of that name in the
   experiment whose test day is T);
3. score every impression of T through HTTP, one request per (user, time) with its candidates, and
   print the consistency result: the largest absolute difference between the served scores and the
   run's logged test predictions (``test_predictions.parquet``), and the number of impressions;
4. print the latency table (:mod:`sim.serving.latency`, as bench/bench_serving.py): the requests of 3
   (one client), then the first ``--latency-requests`` of them again with 2 concurrent clients;
5. stop everything it started (the service, the redis-server), also when a step failed.

Exit status: 0 when every score is within ``--tolerance`` of the logged one, 1 otherwise, 2 when what it
needs is missing (the message says what to run).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from sim.config import PROJECT_ROOT, load_pipeline_conf


class Missing(SystemExit):
    def __init__(self, message: str):
        print(f"serve-demo: {message}", file=sys.stderr, flush=True)
        super().__init__(2)


def find_run(experiment: str, model: str, tracking_uri: str, test_date: str) -> tuple[str, str]:
    """(run id, model uri) of the latest run named ``model`` in ``experiment`` that logged a model and
    was tested on ``test_date``."""
    from sim.adapters import tracking
    try:
        runs = tracking.search_runs([experiment], uri=tracking_uri, filter_string=f"tags.mlflow.runName = '{model}'")
    except Exception as e:  # noqa: BLE001 - MLflow's errors for a missing store or experiment vary
        raise Missing(f"cannot read experiment {experiment!r} at {tracking_uri} ({e}): run `make demo` first")
    for _, r in runs.sort_values("start_time", ascending=False).iterrows():
        tested = r.get("params.test_dates") or ""
        model_uri = r.get("tags.model_uri")
        if model_uri and (not tested or test_date in tested):
            return r.run_id, model_uri
    raise Missing(f"no run {model!r} with a logged model tested on {test_date} in experiment {experiment!r} "
                  f"at {tracking_uri}: run `make demo` (or `python -m sim.train --expid {model} ...`) first")


def test_impressions(lakehouse: str, date: str) -> pd.DataFrame:
    """The samples rows of ``date`` the service needs (impression, user, time, candidate), via delta-rs."""
    from sim.adapters.delta_io import MissingTableError, log_exists, open_log
    path = os.path.join(lakehouse, "samples")
    if not log_exists(path):
        raise Missing(f"no samples table at {path}: run `make demo` first")
    try:
        df = open_log(path).to_pandas(partitions=[("dt", "=", date)],
                                      columns=["impression_id", "user_id", "ts", "item_id", "category_id"])
    except MissingTableError as e:
        raise Missing(str(e))
    if df.empty:
        raise Missing(f"the samples table at {path} has no rows of {date}: run `make demo` first")
    return df.sort_values("impression_id").reset_index(drop=True)


def request_groups(imp: pd.DataFrame):
    """One request per (user, time): (impression ids, request body)."""
    from sim.serving.latency import score_request
    return [(g.impression_id.to_numpy(), score_request(u, t, g.item_id, g.category_id))
            for (u, t), g in imp.groupby(["user_id", "ts"], sort=True)]


def main(argv: Sequence[str] | None = None) -> int:
    from sim.local.cluster import free_port
    from sim.local.demo import plan
    from sim.local.redis_server import RedisServer, redis_server_binary
    from sim.serving.latency import ServiceProcess, latency_table, measure
    from sim.ubt.dates import shift_date

    p = argparse.ArgumentParser(prog="python -m sim.local.serve_demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--lakehouse", default=str(PROJECT_ROOT / "lakehouse"))
    p.add_argument("--experiment", default="sim-demo", help="MLflow experiment of the demo's runs")
    p.add_argument("--tracking-uri", default=f"sqlite:///{PROJECT_ROOT / 'mlflow.db'}")
    p.add_argument("--model", default="sim_hard", help="the run name (experiment id) whose model to serve")
    p.add_argument("--test-date", default=None, help="default: the demo's test day (the generator's last day)")
    p.add_argument("--store", choices=("auto", "redis", "embedded"), default="auto",
                   help="auto: a redis-server of its own where one is available, else the embedded file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="pipeline config override, as given to `make demo` (e.g. generator.users=100)")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the service")
    p.add_argument("--tolerance", type=float, default=1e-5)
    p.add_argument("--latency-requests", type=int, default=2000,
                   help="requests sent again with 2 concurrent clients for the latency table")
    args = p.parse_args(argv)

    lakehouse = str(Path(args.lakehouse).resolve())
    cfg = load_pipeline_conf(overrides=args.overrides, lakehouse=lakehouse)
    test_date = args.test_date or plan(cfg)["test_from"]
    snapshot = shift_date(test_date, -1)
    run_id, model_uri = find_run(args.experiment, args.model, args.tracking_uri, test_date)
    imp = test_impressions(lakehouse, test_date)
    use_redis = args.store == "redis" or (args.store == "auto" and redis_server_binary() is not None)
    if args.store == "redis" and redis_server_binary() is None:
        raise Missing("no redis-server: run `make setup` (it provides one) or use --store embedded")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")]),
               OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "PASSIVE"))
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="serve-demo-") as work, ExitStack() as stack:
        work = Path(work)
        if use_redis:
            server = stack.enter_context(RedisServer(work / "redis"))
            store = server.url
            print(f"[serve-demo] store: redis-server {server.binary} on {server.url}", flush=True)
        else:
            store = str(work / "ubt.sqlite")
            print(f"[serve-demo] store: the embedded SQLite file {store} (no redis-server found)", flush=True)
        print(f"[serve-demo] export UBT({snapshot}) and the behaviors of {test_date}", flush=True)
        cmd = [sys.executable, str(PROJECT_ROOT / "jobs" / "export_ubt.py"), "--lakehouse", lakehouse,
               "--date", snapshot, "--append-day", test_date, "--store", store,
               *[a for o in args.overrides for a in ("--set", o)]]
        proc = subprocess.run(cmd, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            print(proc.stdout[-3000:], proc.stderr[-6000:], file=sys.stderr)
            raise SystemExit(f"serve-demo: the export failed (exit {proc.returncode}): {' '.join(cmd)}")
        print("".join(f"  {line}\n" for line in proc.stdout.splitlines() if "_OK " in line), end="", flush=True)
        port = free_port()
        print(f"[serve-demo] scoring service on http://127.0.0.1:{port}: run {run_id} ({args.model}, "
              f"{model_uri})", flush=True)
        service = stack.enter_context(ServiceProcess(model_uri, args.tracking_uri, store, port, args.threads,
                                                     env=env, cwd=PROJECT_ROOT, log=work / "service.log"))
        groups = request_groups(imp)
        print(f"[serve-demo] scoring {len(imp):,} impressions of {test_date} in {len(groups):,} requests", flush=True)
        answers: list[list[dict]] = []
        one = measure(service.port, [[b for _, b in groups]], warmup=0, answers=answers)
        served = pd.Series(np.concatenate([a["scores"] for a in answers[0]]),
                           index=np.concatenate([ids for ids, _ in groups]))
        from sim.adapters import tracking
        logged = pd.read_parquet(tracking.download_artifact(run_id, "test_predictions.parquet", args.tracking_uri))
        logged = logged.set_index("impression_id").score
        common = served.index.intersection(logged.index)
        diff = (served[common] - logged[common]).abs()
        dates = {a["snapshot_date"] for a in answers[0]}
        print(f"\nconsistency ({args.model}, store {'redis' if use_redis else 'embedded'}): {len(served):,} "
              f"impressions of {test_date} in {len(groups):,} requests, {len(common):,} of the run's "
              f"{len(logged):,} logged predictions matched; max |served - logged| = {diff.max():.3g} "
              f"(tolerance {args.tolerance:g}); snapshot {', '.join(sorted(dates))}")
        again = groups[:args.latency_requests]
        half = [[b for i, (_, b) in enumerate(again) if i % 2 == c] for c in range(2)]
        two = measure(service.port, half, warmup=0)
        kind = "redis" if use_redis else "embedded"
        rows = [{"model": args.model, "store": kind, "clients": 1, **one},
                {"model": args.model, "store": kind, "clients": 2, **two}]
        print(f"\nlatency over HTTP (candidates per request: median "
              f"{int(np.median([len(ids) for ids, _ in groups]))}, max {max(len(ids) for ids, _ in groups)}):")
        print(latency_table(rows))
    print(f"\nserve-demo finished in {time.perf_counter() - started:.0f}s; the service and the store it "
          "started are stopped", flush=True)
    ok = len(common) == len(served) == len(logged) and float(diff.max()) <= args.tolerance
    print("SERVE_DEMO_OK" if ok else "SERVE_DEMO_MISMATCH", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
