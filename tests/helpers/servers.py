"""Servers the tests start as real processes (an MLflow tracking server, ``mlflow ui``, ``mlflow models
serve``): each in its own process group, waited for on an HTTP path, and stopped with its whole group
when the block ends, also on failure."""
from __future__ import annotations

import contextlib
import json
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Iterator, Sequence

from sim.cluster import http_answers, stop_group


@contextlib.contextmanager
def server(cmd: Sequence[str] | str, url: str, log_path: Path, *, cwd: Path | str | None = None,
           env: dict | None = None, ready: str = "/health", timeout: float = 240) -> Iterator[str]:
    """Run ``cmd`` (a list, or a string for ``bash -c``) until ``url + ready`` answers 200; yield
    ``url``; stop the process group afterwards. Fails with the server's log if it exits or does not
    answer within ``timeout`` seconds."""
    argv = ["bash", "-c", cmd] if isinstance(cmd, str) else list(cmd)
    with open(log_path, "w") as log:
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            deadline = time.monotonic() + timeout
            while True:
                if proc.poll() is not None:
                    raise AssertionError(f"{argv} exited {proc.returncode}:\n{log_path.read_text()[-4000:]}")
                if http_answers(url + ready, ok_only=True):
                    break
                if time.monotonic() > deadline:
                    raise AssertionError(f"{argv} did not answer on {url}{ready} within {timeout:.0f} s:\n"
                                         f"{log_path.read_text()[-4000:]}")
                time.sleep(1)
            yield url
        finally:
            stop_group(proc)


def post_json(url: str, body: dict | None = None, timeout: float = 60) -> dict:
    """GET ``url`` (no body) or POST ``body`` as JSON; the decoded JSON answer."""
    req = urllib.request.Request(url, data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.load(r)
