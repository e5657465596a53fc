"""Where a rank trains: ``train.device`` (``auto``, ``cpu``, ``cuda``) resolved per rank, and how its
gradients are averaged.

- ``cpu``: everything on the host, as before this setting existed; the tested path.
- ``cuda``: each rank uses the GPU of its ``hvd.local_rank()`` (one process per GPU, as ``horovodrun -np 8``
  on an 8-GPU host gives). Model, optimizer state, loss and batches live there; a batch goes from pinned
  host memory to the GPU once per step; predictions and metrics come back to the host, checkpoints are
  written with host tensors so a run continues on either kind of device. Gradients are averaged by
  Horovod's GPU operations when it was built with them (:func:`sim.adapters.hvd.gpu_operations`),
  through host memory otherwise.
- ``auto``: ``cuda`` when torch sees a GPU, else ``cpu``.

This module is kept apart from the loop so the few lines that only run with CUDA are in one place. None
of them has run on a GPU in this project's tests (its machines have none); the CPU path and the
through-host averaging (on CPU tensors) are tested. The same seed does not give the same figures on a GPU
as on the CPU (other kernels, other random streams).
"""
from __future__ import annotations

import dataclasses
from typing import Mapping

import torch

from sim.config import ConfigError

DEVICES = ("auto", "cpu", "cuda")


def wants_cuda(setting: str) -> bool:
    """Whether ``train.device`` = ``setting`` means the GPU on this machine."""
    return setting == "cuda" or (setting == "auto" and torch.cuda.is_available())


def check_device(setting: str, processes_per_host: int = 1) -> None:
    """Refuse, before any worker starts, a ``train.device`` this machine cannot give: ``cuda`` without a
    CUDA device, or more processes on this host than GPUs (one GPU per process)."""
    if setting == "cuda" and not torch.cuda.is_available():
        why = ("this torch is a CPU-only build" if torch.version.cuda is None
               else f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no CUDA device")
        raise ConfigError(f"train.device=cuda but {why}: set train.device=cpu (or auto, which picks the GPU "
                          "only where there is one), or run on a machine with an NVIDIA GPU and its driver")
    if wants_cuda(setting) and processes_per_host > torch.cuda.device_count():
        raise ConfigError(f"train.device={setting} runs one process per GPU, but {processes_per_host} "
                          f"processes were asked for on a host with {torch.cuda.device_count()} GPU(s): "
                          "start at most that many, or set train.device=cpu")


@dataclasses.dataclass(frozen=True)
class Placement:
    """One rank's device and how its gradients are averaged: ``"cpu"`` (host tensors, Gloo), ``"nccl"`` /
    ``"gpu"`` (Horovod's own GPU operations) or ``"through_host"`` (a CPU build of Horovod with the model
    on a GPU: :func:`sim.adapters.hvd.distributed_optimizer` with ``through_host``)."""
    device: torch.device
    gradients: str

    @property
    def through_host(self) -> bool:
        return self.gradients == "through_host"

    def params(self) -> dict[str, str]:
        """What MLflow logs: the resolved device kind (every rank its own GPU) and the reduction."""
        out = {"type": self.device.type, "gradients": self.gradients}
        if self.device.type == "cuda":  # GPU only
            out["name"] = torch.cuda.get_device_name(self.device)
        return out


def place(setting: str, local_rank: int, gpu_operations: str | None) -> Placement:
    """Resolve ``train.device`` for the rank with ``local_rank`` (``gpu_operations``: what the installed
    Horovod offers) and make its GPU the current one."""
    check_device(setting)
    if not wants_cuda(setting):
        return Placement(torch.device("cpu"), "cpu")
    # GPU only from here.
    if local_rank >= torch.cuda.device_count():
        raise ConfigError(f"local rank {local_rank} has no GPU of its own ({torch.cuda.device_count()} on "
                          "this host): start at most one process per GPU, or set train.device=cpu")
    device = torch.device("cuda", local_rank)
    torch.cuda.set_device(device)
    return Placement(device, gpu_operations or "through_host")


def to_device(batch: Mapping[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """A batch of host tensors on ``device``: unchanged on the CPU; for a GPU pinned, then copied without
    blocking the host."""
    if device.type == "cpu":
        return dict(batch)
    return {k: v.pin_memory().to(device, non_blocking=True) for k, v in batch.items()}  # GPU only
