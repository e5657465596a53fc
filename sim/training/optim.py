"""The optimizer and its learning-rate schedule: Adam (AdamW with ``train.weight_decay``) and the rule
that ``train.lr_scaling`` names for N Horovod processes (:class:`sim.config.experiment.TrainSettings`)."""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class LrSchedule:
    """The learning rate of each optimizer step under ``train.lr_scaling`` with ``processes`` Horovod
    processes (:class:`sim.config.experiment.TrainSettings` says the rule): ``factor(step)`` multiplies
    ``train.lr``. With one process ``none`` and ``linear`` give the same factors."""
    scaling: str
    processes: int
    rate: float
    decay_steps: float
    warmup_steps: float

    def factor(self, step: int) -> float:
        if self.scaling == "none":
            return self.rate ** (step / self.decay_steps)
        n = self.processes
        warm = n if step >= self.warmup_steps else 1 + (n - 1) * step / self.warmup_steps
        return warm * self.rate ** (step * n / self.decay_steps)

    def params(self, t: dict) -> dict:
        """What a run records of its batches and rates: processes, the global batch, the peak rate and
        the rule in words."""
        n, lr = self.processes, t["lr"]
        if self.scaling == "none":
            rule = f"lr * {self.rate:g} ** (optimizer_step / {self.decay_steps:g})"
            peak = lr
        else:
            rule = (f"lr * {n} * {self.rate:g} ** (optimizer_step * {n} / {self.decay_steps:g}), warmed up "
                    f"linearly from lr over {self.warmup_steps:g} optimizer steps")
            peak = lr * n
        return {"processes": n, "batch_size_per_process": t["batch_size"],
                "global_batch_size": t["batch_size"] * n, "lr_scaling": self.scaling, "lr_peak": peak,
                "lr_rule": rule}


def lr_schedule(t: dict, processes: int, steps_per_epoch: int) -> LrSchedule:
    """The :class:`LrSchedule` of the ``train`` settings ``t`` for ``processes`` processes taking
    ``steps_per_epoch`` optimizer steps an epoch."""
    return LrSchedule(t.get("lr_scaling", "none"), int(processes), t["lr_decay_rate"], t["lr_decay_steps"],
                      t.get("lr_warmup_epochs", 1.0) * steps_per_epoch)


def make_optimizer(model, t: dict):
    """Adam (the paper's optimizer); with ``train.weight_decay`` > 0, AdamW's decoupled weight decay."""
    import torch
    lr, wd = t["lr"], t["weight_decay"]
    if wd > 0:
        return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=wd)
    return torch.optim.Adam(model.parameters(), lr=lr)
