"""Horovod behind one small module: init, rank/size, distributed optimizer, broadcast, allreduce and
allgather of metrics, and the launch of ranks as Spark tasks (:func:`run_on_spark`). Nothing else in the
code imports horovod.

Without ``horovodrun`` Horovod still initialises as a single process (size 1), so training code has one
path for one and for N processes.

GPUs: a Horovod built with CUDA (``HOROVOD_GPU_OPERATIONS=NCCL``, what ``scripts/setup.sh`` builds where it
finds the CUDA toolkit and NCCL) reduces CUDA tensors itself; the CPU build (Gloo only) cannot be trusted
with them, so there :func:`distributed_optimizer` with ``through_host`` averages the gradients through
host memory, and :func:`broadcast_model_and_optimizer` always sends host copies.
"""
from __future__ import annotations

from typing import Any

import torch

import horovod.torch as _hvd

_initialised = False


def init() -> None:
    global _initialised
    if not _initialised:
        _hvd.init()
        _initialised = True


def rank() -> int:
    return _hvd.rank()


def size() -> int:
    return _hvd.size()


def local_rank() -> int:
    return _hvd.local_rank()


def is_chief() -> bool:
    return _hvd.rank() == 0


def gpu_operations() -> str | None:
    """How the installed Horovod reduces CUDA tensors: ``"nccl"`` (built with NCCL), ``"gpu"`` (built with
    CUDA or ROCm without NCCL: its own copies through host memory, ordered by CUDA events), or None (a
    CPU build: its CUDA entry points copy to the host without waiting for the GPU, so they are not used)."""
    if _hvd.nccl_built():
        return "nccl"
    if _hvd.cuda_built() or _hvd.rocm_built():
        return "gpu"
    return None


def distributed_optimizer(optimizer: torch.optim.Optimizer, model: torch.nn.Module,
                          through_host: bool = False) -> torch.optim.Optimizer:
    """Wrap ``optimizer`` so gradients are averaged across ranks before each step: by Horovod's
    ``DistributedOptimizer`` (reductions overlap the backward pass), or with ``through_host`` by
    :func:`_average_through_host` at each ``step()``, for a model on a GPU with a CPU build of Horovod."""
    if not through_host:
        return _hvd.DistributedOptimizer(optimizer, named_parameters=model.named_parameters(),
                                         op=_hvd.Average)
    params = [p for p in model.parameters() if p.requires_grad]
    base = type(optimizer)

    def step(self, closure=None):
        _average_through_host(params)
        return base.step(self, closure)

    # The same optimizer object (its state, its param groups, isinstance checks of the LR scheduler), of
    # a subclass whose step() averages first. Closures are not supported, as with DistributedOptimizer.
    optimizer.__class__ = type(f"HostStaged{base.__name__}", (base,), {"step": step})
    return optimizer


def _average_through_host(params: list[torch.nn.Parameter]) -> None:
    """Average the gradients of ``params`` over the ranks through host memory: one flat buffer, one
    synchronous device-to-host copy, one allreduce on the CPU, one copy back. A parameter without a
    gradient on this rank takes part with zeros (other ranks may have one), as in Horovod's
    ``DistributedOptimizer``. On CPU tensors the copies are no-ops (how the tests run this path)."""
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads]).cpu()
    flat = _hvd.allreduce(flat, name="gradients_through_host", op=_hvd.Average).to(params[0].device)
    offset = 0
    for p, g in zip(params, grads):
        part = flat[offset:offset + g.numel()].view_as(g)
        offset += g.numel()
        if p.grad is None:
            p.grad = part.clone()
        else:
            p.grad.copy_(part)


def broadcast_model_and_optimizer(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                                  root_rank: int = 0) -> None:
    """Make every rank start from rank 0's parameters and optimizer state.

    The optimizer state travels as one pickled object rather than through
    ``hvd.broadcast_optimizer_state``: that one takes a zero-gradient step to create empty state (Adam's
    step count then starts at 1) and round-trips hyper-parameters through float32 tensors, so a run
    resumed from a checkpoint would not continue exactly like an uninterrupted one.

    Both travel as host copies (once per run), whatever device the model is on and however Horovod was
    built; ``load_state_dict`` puts them back on the model's device. On the CPU the copies are the
    tensors themselves.
    """
    state = {k: v.cpu() for k, v in model.state_dict().items()}
    _hvd.broadcast_parameters(state, root_rank=root_rank)
    model.load_state_dict(state)
    if _hvd.size() > 1:
        state = _hvd.broadcast_object(to_cpu(optimizer.state_dict()), root_rank=root_rank,
                                      name="optimizer_state")
        if _hvd.rank() != root_rank:
            optimizer.load_state_dict(state)


def to_cpu(obj: Any) -> Any:
    """``obj`` with every tensor in its dicts, lists and tuples on the CPU (state dicts, checkpoints)."""
    if isinstance(obj, torch.Tensor):
        return obj.cpu()
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_cpu(v) for v in obj)
    return obj


def broadcast_object(obj: Any, root_rank: int = 0, name: str | None = None) -> Any:
    return _hvd.broadcast_object(obj, root_rank=root_rank, name=name)


def allreduce_mean(value: float | torch.Tensor, name: str) -> float:
    t = value.detach().clone() if isinstance(value, torch.Tensor) else torch.tensor(float(value))
    return float(_hvd.allreduce(t.to(torch.float64), name=name, op=_hvd.Average))


def allreduce_sum(value: float | torch.Tensor, name: str) -> float:
    t = value.detach().clone() if isinstance(value, torch.Tensor) else torch.tensor(float(value))
    return float(_hvd.allreduce(t.to(torch.float64), name=name, op=_hvd.Sum))


def allgather(tensor: torch.Tensor, name: str) -> torch.Tensor:
    """Concatenate ``tensor`` of every rank along dim 0 (first dims may differ between ranks)."""
    return _hvd.allgather(tensor.contiguous(), name=name)


def barrier() -> None:
    _hvd.allreduce(torch.zeros(1), name="barrier")


FORWARDED_ENV = ("SIM_", "MLFLOW_", "AWS_", "OMP_")


def run_on_spark(fn, args: tuple, num_proc: int, master: str, app_name: str,
                 conf: dict | None = None) -> list:
    """``fn(*args)`` on ``num_proc`` Horovod ranks, each in a Spark task of the cluster at ``master``
    (Horovod's Spark runner, ``horovod.spark.run``, over Gloo); the ranks' return values in rank order.

    Each task starts its rank with the executors' Python (``spark.pyspark.python``: ``$PYSPARK_PYTHON``,
    else this interpreter, whose venv has torch, horovod and ``sim``); the cluster must offer
    ``num_proc`` task slots at once (one core per task) within ``HOROVOD_SPARK_START_TIMEOUT``
    (default 600 s). A rank runs in its executor's environment plus the settings of this process it
    reads: ``SIM_*``, ``MLFLOW_*``, ``AWS_*`` and ``OMP_*`` (not the rest: PATH and the like belong to
    the worker's machine)."""
    import os
    import sys

    import horovod.spark

    from sim.adapters.spark import get_spark
    python = os.environ.get("PYSPARK_PYTHON") or sys.executable
    confs = {"spark.pyspark.python": python, "spark.task.cpus": "1", "spark.ui.enabled": "false",
             **(conf or {})}
    spark = get_spark(app_name, master=master, conf=confs)
    try:
        env = {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV)}
        return horovod.spark.run(fn, args=args, num_proc=num_proc, use_gloo=True, executable=python,
                                 env=env, verbose=1)
    finally:
        spark.stop()
