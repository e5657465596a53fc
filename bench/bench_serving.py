"""Latency and load of the online scorer (sim.serving): p50 / p99 per request over HTTP, for 200 candidates
and users of 1,000, 10,000 and 54,000 behaviors, with 1 and with 4 concurrent clients, for SIM hard
search against DIN over the short window, DIN over the whole long sequence (``din_long``, the cost
reference of bench/bench_models.py) and SIM soft search (which the paper found too slow online).

    python bench/bench_serving.py [--requests 200] [--threads 1] [--store embedded|redis] [--quick]

What runs: each model (untrained, default sizes of conf/experiments.yaml's Base: emb_dim 8, MLP 200 x 80;
weights do not change the cost) is logged as the training loop logs it (a ``SamplesScorer`` pyfunc in a
SQLite MLflow store) and served by ``python -m sim.serving.service`` in its own process (``--threads``
torch threads; ``--no-settings-check``: no training samples to check the snapshot against);
the store (``--store embedded``: one SQLite file; ``redis``: a redis-server of its own on
127.0.0.1, :mod:`sim.local.redis_server`, several may be given) holds a UBT snapshot of three users with 1,000, 10,000
and 54,000 behaviors over the 180-day window (categories skewed toward a user's interests, as
bench/common.py's data: written in numpy, not by the Spark export, which this does not measure), with
the default caps (short 50, hard K 200, long 1,000) and 20 behaviors of the request's day in the
append path. A request: the user, a time on the day after the snapshot, 200 candidates whose categories
follow the user's. Clients are threads of this process on keep-alive connections, each sending
``--requests`` requests after 5 of warm-up; ``requests_per_s`` is all clients' requests over the wall time.

The service process and the clients are :mod:`sim.serving.latency`'s (``make serve-demo`` uses them too).

The last line is JSON: ``results`` (one entry per model, store, user size and client count: model, store,
behaviors, candidates, clients, p50_ms, p99_ms, requests_per_s, server_p50_ms), and ``p50_ms`` and ``p99_ms``
(the same figures keyed ``model.behaviors.clients``, with ``.redis`` after it for the Redis store, for
bench/summary.py's table).
"""
from __future__ import annotations

import argparse
import json
import tempfile
from contextlib import ExitStack
from pathlib import Path

import numpy as np

from common import ROOT, env  # first: it puts the checkout's sim on sys.path
from sim.serving.latency import ServiceProcess, measure as measure_clients  # noqa: E402

SNAPSHOT = "2024-06-30"
DAY_START = 1_719_792_000  # 2024-07-01 00:00 UTC, the request day
LONG_DAYS, SHORT_DAYS = 180, 14
CAPS = {"short_cap": 50, "hard_k": 200, "long_cap": 1000}
SIZES = (1_000, 10_000, 54_000)
CANDIDATES = 200
MODELS = ("sim_hard", "din", "din_long", "sim_soft")
SETTINGS = {"windows.mode": "time", "windows.long_days": LONG_DAYS, "windows.short_days": SHORT_DAYS,
            "caps.short_cap": CAPS["short_cap"], "caps.hard_k": CAPS["hard_k"], "caps.long_cap": CAPS["long_cap"],
            "time_gap_buckets": 64, "time_gap_per_octave": 1}


def user_history(rng: np.random.Generator, n: int, categories: int = 1000) -> tuple[np.ndarray, ...]:
    """``n`` behaviors (ts, item, category) of one user in UBT(SNAPSHOT)'s window, newest first."""
    start = DAY_START - LONG_DAYS * 86400
    ts = rng.integers(start, DAY_START, n)
    interests = rng.choice(categories, 20, replace=False) + 1
    cats = interests[np.floor(rng.random(n) ** 2 * 20).astype(int)]
    items = cats * 100_000 + np.floor(rng.random(n) ** 3 * 5000).astype(int) + 1
    order = np.lexsort((-cats, -items, -ts))
    return ts[order], items[order], cats[order], interests


def build_store(where: str, rng: np.random.Generator) -> dict[int, np.ndarray]:
    """The snapshot in the store ``where`` (a file or a URL): users 1, 2, 3 with SIZES behaviors; returns
    each user's interest categories."""
    from sim.serving.store import CategoryRecord, UserRecord, open_store
    store = open_store(where, create=True)
    w = store.new_snapshot(SNAPSHOT, {"settings": SETTINGS})
    interests, users, keys = {}, [], []
    first_day = DAY_START - LONG_DAYS * 86400
    for u, n in enumerate(SIZES, start=1):
        ts, items, cats, interests[u] = user_history(rng, n)
        recent = max(CAPS["long_cap"], CAPS["short_cap"])
        users.append((u, UserRecord(ts[:recent], items[:recent], cats[:recent], n,
                                    ts[(ts >= first_day) & (ts < first_day + 86400)])))
        for k in np.unique(cats):
            mine = cats == k
            keys.append((u, int(k), CategoryRecord(ts[mine][:CAPS["hard_k"]], items[mine][:CAPS["hard_k"]],
                                                   int(ts[mine][0]))))
    w.put_users(users)
    w.put_categories(keys)
    w.switch()
    for u in interests:  # the request day's behaviors before the requests (at noon)
        day_ts = DAY_START + rng.integers(0, 12 * 3600, 20)
        k = rng.choice(interests[u], 20)
        store.append(u, zip(day_ts.tolist(), (k * 100_000 + 7).tolist(), k.tolist()))
    return interests


def log_models(uri: str) -> dict[str, str]:
    """Each model logged as training logs it; {name: model uri}."""
    import torch

    from sim.adapters import tracking
    from sim.models.registry import MODELS as PARTS_OF, compose
    from sim.serving.rows import RowSpec, build_rows
    from sim.serving.store import CategoryRecord, DayBehaviors, UserRecord

    example_rows = build_rows(RowSpec.from_settings(SETTINGS), 1, DAY_START + 3600, [1, 2], [3, 4],
                              UserRecord(*(np.array([DAY_START - 60]),) * 3, 1, np.zeros(0, np.int64)),
                              {3: CategoryRecord(np.array([DAY_START - 60]), np.array([9]), DAY_START - 60)},
                              DayBehaviors.empty())
    out = {}
    for name in MODELS:
        torch.manual_seed(0)
        short, long = ("din", "din_long") if name == "din_long" else PARTS_OF[name]
        model = compose(short, long, {"emb_dim": 8, "item_buckets": 1009, "category_buckets": 10007,
                                      "mlp_dims": [200, 80]}, name=name)
        with tracking.run("bench-serving", run_name=name, uri=uri):
            out[name] = tracking.log_scoring_model(model, example_rows.dense(model.input_columns), rows=2)
    return out


def request_body(rng: np.random.Generator, user: int, interests: np.ndarray) -> bytes:
    cats = np.where(rng.random(CANDIDATES) < 0.7, rng.choice(interests, CANDIDATES), rng.integers(1, 1001, CANDIDATES))
    items = cats * 100_000 + rng.integers(1, 5000, CANDIDATES)
    ts = DAY_START + 12 * 3600 + int(rng.integers(0, 3600))
    return json.dumps({"user_id": user, "ts": ts, "candidates": [
        {"item_id": int(i), "category_id": int(k)} for i, k in zip(items, cats)]}).encode()


def measure(port: int, user: int, interests: np.ndarray, clients: int, requests: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    warmup = 5
    bodies = [[request_body(rng, user, interests) for _ in range(requests + warmup)] for _ in range(clients)]
    out = measure_clients(port, bodies, warmup)
    out.pop("requests")
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=200, help="requests per client per configuration")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the service")
    p.add_argument("--clients", type=int, nargs="+", default=[1, 4])
    p.add_argument("--sizes", type=int, nargs="+", default=list(SIZES), choices=SIZES,
                   help="the users measured, by their number of behaviors")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument("--store", nargs="+", default=["embedded"], choices=("embedded", "redis"),
                   help="the serving store(s): the embedded SQLite file, or a redis-server of its own")
    p.add_argument("--quick", action="store_true", help="30 requests per client")
    args = p.parse_args(argv)
    requests = 30 if args.quick else args.requests
    from sim.local.cluster import free_port
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as d, ExitStack() as stack:
        stores = {}
        for kind in args.store:
            if kind == "redis":
                from sim.local.redis_server import RedisServer
                stores[kind] = stack.enter_context(RedisServer(Path(d) / "redis")).url
            else:
                stores[kind] = str(Path(d) / "ubt.sqlite")
            interests = build_store(stores[kind], np.random.default_rng(7))  # the same data in each
        uri = f"sqlite:///{Path(d) / 'mlflow.db'}"
        models = log_models(uri)
        for name in args.models:
            for kind, where in stores.items():
                with ServiceProcess(models[name], uri, where, free_port(), args.threads, env=env(), cwd=ROOT,
                                    settings_check=False) as svc:
                    for u, n in ((u, n) for u, n in enumerate(SIZES, start=1) if n in args.sizes):
                        for clients in args.clients:
                            r = {"model": name, "store": kind, "behaviors": n, "candidates": CANDIDATES,
                                 "clients": clients,
                                 **measure(svc.port, u, interests[u], clients, requests, seed=u * 10 + clients)}
                            results.append(r)
                            print(f"{name:9s} {kind:8s} behaviors={n:6,d} clients={clients} "
                                  f"p50={r['p50_ms']:7.1f} ms p99={r['p99_ms']:7.1f} ms "
                                  f"{r['requests_per_s']:7.1f} req/s (server p50 {r['server_p50_ms']:.1f} ms)",
                                  flush=True)

    def by_config(key: str) -> dict:
        return {f"{r['model']}.{r['behaviors']}.{r['clients']}" + (".redis" if r["store"] == "redis" else ""):
                round(r[key], 2) for r in results}

    print(json.dumps({"bench": "bench_serving", "threads": args.threads, "requests": requests, "stores": args.store,
                      "results": results, "p50_ms": by_config("p50_ms"), "p99_ms": by_config("p99_ms")}))


if __name__ == "__main__":
    main()
