"""Servers the tests start as real processes (an MLflow tracking server, ``mlflow ui``, ``mlflow models
serve``): each in its own process group, waited for on an HTTP path, and stopped with its whole group
when the block ends, also on failure."""
from __future__ import annotations

import contextlib
import json
import os
import urllib.request
from pathlib import Path
from typing import Iterator, Sequence

from sim.local.cluster import LocalCluster, http_answers


@contextlib.contextmanager
def server(cmd: Sequence[str] | str, url: str, log_path: Path, *, cwd: Path | str | None = None,
           env: dict | None = None, ready: str = "/health", timeout: float = 240) -> Iterator[str]:
    """Run ``cmd`` (a list, or a string for ``bash -c``) until ``url + ready`` answers 200; yield
    ``url``; stop the process group afterwards. Fails with the server's log (``log_path``) if it exits
    or does not answer within ``timeout`` seconds (:meth:`sim.local.cluster.LocalCluster.start_service`)."""
    argv = ["bash", "-c", cmd] if isinstance(cmd, str) else list(cmd)
    with LocalCluster(log_path.parent) as c:
        c.start_service(log_path.stem, argv, lambda: http_answers(url + ready, ok_only=True), timeout,
                        os.environ if env is None else env, cwd=cwd, url=url)
        yield url


def post_json(url: str, body: dict | None = None, timeout: float = 60) -> dict:
    """GET ``url`` (no body) or POST ``body`` as JSON; the decoded JSON answer."""
    req = urllib.request.Request(url, data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.load(r)
