"""A local Redis server for the serving store's tests, ``make serve-demo`` and bench/bench_serving.py:
``redis-server`` on 127.0.0.1 at a port, its files in a directory, no persistence, in its own process
group, stopped when the block ends (also when a step inside failed).

    python -m sim.local.redis_server --dir /tmp/redis --port 6390

Which ``redis-server``: ``$SIM_REDIS_SERVER``, else the one on ``PATH``, else the build ``make setup``
caches in ``$SIM_CACHE/redis-<version>/bin`` (Debian's, unpacked without installing it).
"""
from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence


def redis_server_binary() -> str | None:
    """The ``redis-server`` to run (see the module docstring), None when there is none."""
    env = os.environ.get("SIM_REDIS_SERVER")
    if env:
        return env
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    from sim.adapters.spark import cache_dir
    cached = sorted(cache_dir().glob("redis-*/bin/redis-server"))
    return str(cached[-1]) if cached else None


def require_redis_server() -> str:
    found = redis_server_binary()
    if found is None:
        raise FileNotFoundError("no redis-server: run `make setup` (it caches one), install it (Debian: "
                                "apt-get install redis-server), or set SIM_REDIS_SERVER=/path/to/redis-server")
    return found


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """``redis-server`` on 127.0.0.1:``port`` with its working directory ``work`` (created); ``url`` is
    ``redis://127.0.0.1:<port>/0``. A context manager: started on entry, stopped (SIGTERM, then SIGKILL
    of its process group) on exit; :meth:`stop` may be called before, to take the store down."""

    def __init__(self, work: str | os.PathLike, port: int | None = None, binary: str | None = None):
        from sim.local.cluster import free_port
        self.work = Path(work).resolve()
        self.port = port or free_port()
        self.binary = binary or require_redis_server()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None

    def command(self) -> list[str]:
        return [self.binary, "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.work),
                "--save", "", "--appendonly", "no", "--daemonize", "no", "--protected-mode", "yes",
                "--logfile", str(self.work / "redis.log")]

    def start(self, timeout: float = 30) -> "RedisServer":
        self.work.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(self.command(), cwd=self.work, start_new_session=True,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while not _answers(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                log = (self.work / "redis.log")
                tail = log.read_text()[-2000:] if log.exists() else ""
                self.stop()
                raise RuntimeError(f"redis-server on port {self.port} did not start ({self.binary}): "
                                   f"{tail or self.proc.stderr.read().decode()[-2000:]}")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            from sim.local.cluster import stop_group
            stop_group(self.proc, grace=10)
            self.proc = None

    def __enter__(self) -> "RedisServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sim.local.redis_server", description=__doc__.split("\n\n")[0])
    p.add_argument("--dir", required=True, help="the server's working directory")
    p.add_argument("--port", type=int, default=6379)
    args = p.parse_args(argv)
    server = RedisServer(args.dir, args.port)
    print(f"redis-server ({server.binary}) on {server.url}; Ctrl-C stops it", file=sys.stderr, flush=True)
    return subprocess.call(server.command())


if __name__ == "__main__":
    sys.exit(main())
