"""``train.device``: how a rank's device is resolved and refused, and the averaging of gradients through
host memory that a model on a GPU uses with a CPU build of Horovod. This machine has no GPU: the
through-host averaging runs here on CPU tensors (its copies are then no-ops; under ``horovodrun``, in the
launch test_foundation shares with its own two-rank check); what only runs on a GPU is not tested (see
sim.training.device)."""
from __future__ import annotations


import pytest
import torch

from sim.config import ConfigError
from sim.training.device import check_device, place, to_device

no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without a GPU")


@no_gpu
@pytest.mark.parametrize("setting", ["auto", "cpu"])
def test_auto_and_cpu_resolve_to_the_cpu_without_a_gpu(setting):
    placement = place(setting, local_rank=0, gpu_operations=None)
    assert placement.device == torch.device("cpu") and placement.gradients == "cpu"
    assert not placement.through_host
    assert placement.params() == {"type": "cpu", "gradients": "cpu"}
    batch = {"x": torch.arange(3)}
    assert to_device(batch, placement.device)["x"] is batch["x"]  # no copy on the CPU


def test_cpu_is_the_cpu_whatever_horovod_offers():
    assert place("cpu", local_rank=3, gpu_operations="nccl").device == torch.device("cpu")


@no_gpu
def test_cuda_without_a_gpu_is_refused_saying_what_to_do():
    with pytest.raises(ConfigError, match=r"train.device=cuda but .*: set train.device=cpu"):
        check_device("cuda")
    with pytest.raises(ConfigError, match="train.device=cuda"):
        place("cuda", local_rank=0, gpu_operations=None)
    check_device("auto", processes_per_host=8)  # auto falls back to the CPU: any number of processes
