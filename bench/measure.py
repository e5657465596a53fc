"""Resource sampling shared by the benchmarks: peak RSS and CPU seconds of a process tree."""
from __future__ import annotations

import os
import threading

import psutil


class Resources:
    """Peak RSS (bytes) and CPU seconds of a process (default: this one) and its descendants while the
    block runs, sampled every ``interval`` seconds (CPU of a child that exits between two samples after
    its last one is not counted; the callers that need it exactly use getrusage)."""

    def __init__(self, pid: int | None = None, interval: float = 0.2):
        self.pid = os.getpid() if pid is None else pid
        self.interval, self.peak, self.cpu, self._stop = interval, 0, 0.0, threading.Event()
        self._cpu: dict[int, float] = {}

    def _sample(self) -> int:
        try:
            root = psutil.Process(self.pid)
            procs = [root] + root.children(recursive=True)
        except psutil.Error:  # the process has ended
            return 0
        total = 0
        for p in procs:
            try:
                total += p.memory_info().rss
                t = p.cpu_times()
                self._cpu[p.pid] = t.user + t.system
            except psutil.Error:
                pass
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._sample())
            self._stop.wait(self.interval)

    def __enter__(self) -> "Resources":
        self._sample()
        self._cpu0 = dict(self._cpu)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._sample())
        self.cpu = sum(v - self._cpu0.get(pid, 0.0) for pid, v in self._cpu.items())
