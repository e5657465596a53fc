"""The scoring service as a process, and its latency measured over HTTP: what bench/bench_serving.py and
``make serve-demo`` (:mod:`sim.local.serve_demo`) share.

- :class:`ServiceProcess`: ``python -m sim.serving.service`` in its own process group, up once
  ``/health`` answers 200, stopped (SIGTERM, then SIGKILL of the group) when the block ends.
- :func:`measure`: clients (threads of this process on keep-alive connections) each sending their
  request bodies to ``/score``; p50 / p99 of the latency a client sees, requests per second over the
  wall time, the server's own p50 (``server_ms`` of the answers). The first ``warmup`` requests of
  each client are sent but not counted.
- :func:`latency_table`: those figures as a text table.
"""
from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np


class ServiceProcess:
    """``python -m sim.serving.service`` serving ``model_uri`` from ``store`` (a file or a URL) on
    127.0.0.1:``port`` with ``threads`` torch threads; its stderr goes to ``log`` (default: a pipe). Without
    ``settings_check`` the service does not check the snapshot against the model's training samples."""

    def __init__(self, model_uri: str, tracking_uri: str, store: str, port: int, threads: int = 1,
                 env: Mapping[str, str] | None = None, cwd: str | os.PathLike | None = None,
                 log: Path | None = None, settings_check: bool = True):
        self.port, self.log = port, log
        self.cmd = [sys.executable, "-m", "sim.serving.service", "--model-uri", model_uri, "--tracking-uri",
                    tracking_uri, "--store", str(store), "--port", str(port), "--threads", str(threads)]
        if not settings_check:  # a model no sim.train run logged (the benchmark's untrained ones)
            self.cmd.append("--no-settings-check")
        self.env = dict(env if env is not None else os.environ)
        self.env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        self.cwd = cwd
        self.proc: subprocess.Popen | None = None

    def _stderr(self) -> str:
        if self.log is not None:
            return self.log.read_text()[-3000:] if self.log.exists() else ""
        return self.proc.stderr.read()[-3000:] if self.proc and self.proc.stderr else ""

    def start(self, timeout: float = 180) -> "ServiceProcess":
        err = open(self.log, "w") if self.log is not None else subprocess.PIPE
        self.proc = subprocess.Popen(self.cmd, cwd=self.cwd, env=self.env, start_new_session=True,
                                     stdout=subprocess.DEVNULL, stderr=err, text=True)
        if self.log is not None:
            err.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the scoring service exited {self.proc.returncode}: {self._stderr()}")
            try:
                c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                c.request("GET", "/health")
                r = c.getresponse()
                body = r.read()
                if r.status == 200:
                    return self
                if r.status == 503:
                    raise RuntimeError(f"the scoring service cannot read its store: {body[:500]!r}")
            except OSError:
                time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"the scoring service did not answer on port {self.port} within {timeout:.0f} s")

    def stop(self) -> None:
        if self.proc is not None:
            from sim.local.cluster import stop_group
            stop_group(self.proc, grace=20)
            self.proc = None

    def __enter__(self) -> "ServiceProcess":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()


def score_request(user_id: int, ts: int, items: Sequence[int], categories: Sequence[int]) -> bytes:
    """A ``/score`` request body."""
    return json.dumps({"user_id": int(user_id), "ts": int(ts), "candidates": [
        {"item_id": int(i), "category_id": int(k)} for i, k in zip(items, categories)]}).encode()


def _client(port: int, bodies: Sequence[bytes], warmup: int, lat: list[float], server: list[float],
            answers: list | None, errors: list[str]) -> None:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        for i, body in enumerate(bodies):
            t = time.perf_counter()
            c.request("POST", "/score", body=body, headers={"Content-Type": "application/json"})
            r = c.getresponse()
            payload = r.read()
            took = time.perf_counter() - t
            if r.status != 200:
                errors.append(f"/score answered {r.status}: {payload[:500]!r}")
                return
            answer = json.loads(payload)
            if answers is not None:
                answers.append(answer)
            if i >= warmup:
                lat.append(took)
                server.append(answer["server_ms"])
    except OSError as e:
        errors.append(f"/score on port {port}: {e}")
    finally:
        c.close()


def measure(port: int, bodies: Sequence[Sequence[bytes]], warmup: int = 5,
            answers: list[list[dict]] | None = None) -> dict:
    """One client per entry of ``bodies`` (its request bodies, sent in order), all at once. ``answers``,
    when given, receives each client's answers (the parsed JSON, in order). Raises RuntimeError when
    a request is not answered 200."""
    clients = len(bodies)
    lats, servers, errors = [[] for _ in range(clients)], [[] for _ in range(clients)], []
    if answers is not None:
        answers[:] = [[] for _ in range(clients)]
    threads = [threading.Thread(target=_client, args=(port, bodies[i], warmup, lats[i], servers[i],
                                                      answers[i] if answers is not None else None, errors))
               for i in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    if errors:
        raise RuntimeError(errors[0])
    lat = np.concatenate([np.asarray(x, dtype=float) for x in lats]) * 1000
    counted = sum(max(0, len(b) - warmup) for b in bodies)
    if len(lat) != counted or counted == 0:
        raise RuntimeError(f"{len(lat)} of {counted} requests measured")
    return {"p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99)),
            "requests_per_s": sum(len(b) for b in bodies) / wall,
            "server_p50_ms": float(np.percentile(np.concatenate([np.asarray(s) for s in servers]), 50)),
            "requests": counted}


def latency_table(results: Sequence[Mapping]) -> str:
    """The figures of :func:`measure` (with the configuration keys each result carries) as a table."""
    keys = [k for k in ("model", "store", "behaviors", "candidates", "clients") if any(k in r for r in results)]
    head = [*keys, "requests", "p50_ms", "p99_ms", "req/s", "server_p50_ms"]
    rows = [[str(r.get(k, "")) for k in keys] + [str(r.get("requests", "")), f"{r['p50_ms']:.1f}",
                                                  f"{r['p99_ms']:.1f}", f"{r['requests_per_s']:.1f}",
                                                  f"{r['server_p50_ms']:.1f}"] for r in results]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(head, widths))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in rows]
    return "\n".join(lines)
