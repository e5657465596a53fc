"""Fault injection for tests of crash recovery: ``SIM_CRASH_AT=<point>`` makes the job raise at that
point, as a process killed there would stop (what is committed stays, nothing after it runs)."""
from __future__ import annotations

import os


class InjectedCrash(RuntimeError):
    """Raised at the crash point named by ``SIM_CRASH_AT``."""


def crash_point(name: str) -> None:
    if os.environ.get("SIM_CRASH_AT") == name:
        raise InjectedCrash(f"crash injected at {name} (SIM_CRASH_AT)")
