"""Test hooks, read from the environment here and nowhere else (never from a user's configuration):

- ``SIM_CRASH_AT=<point>`` makes the job raise at that point, as a process killed there would stop (what
  is committed stays, nothing after it runs). Points: ``build_ubt.rejects_written``,
  ``build_samples.rejects_written``, ``train.epoch_<n>_checkpointed`` (every rank, after the checkpoint
  of epoch ``n``, counted from 1).
- ``SIM_DUMP_WEIGHTS=DIR`` makes every training rank save its final weights to ``DIR/rank<r>.pt``, so a
  test compares the ranks' weights.
"""
from __future__ import annotations

import os
from pathlib import Path


class InjectedCrash(RuntimeError):
    """Raised at the crash point named by ``SIM_CRASH_AT``."""


def crash_point(name: str) -> None:
    if os.environ.get("SIM_CRASH_AT") == name:
        raise InjectedCrash(f"crash injected at {name} (SIM_CRASH_AT)")


def dump_weights(model, rank: int) -> None:
    """With ``SIM_DUMP_WEIGHTS=DIR``, save ``model``'s weights (on the host) as ``DIR/rank<rank>.pt``."""
    out = os.environ.get("SIM_DUMP_WEIGHTS")
    if not out:
        return
    import torch

    from sim.adapters import hvd
    Path(out).mkdir(parents=True, exist_ok=True)
    torch.save(hvd.to_cpu(model.state_dict()), Path(out) / f"rank{rank}.pt")
