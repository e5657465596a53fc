"""Run under horovodrun (one launch for two tests' checks); rank 0 writes both parts' results to the
JSON file named by the last argument:

- ``basics``: an allreduce and one distributed optimizer step;
- ``through_host``: a few SGD steps (with momentum; unlike Adam's, its steps scale with the gradients,
  so a wrong average shows) of one model with Horovod's DistributedOptimizer and of a copy with the
  through-host averaging (the path of a model on a GPU with a CPU build of Horovod, here on CPU
  tensors): how far apart the two are, and the ranks, at the end."""
import json
import sys

import torch

from sim.adapters import hvd


def basics(r: int, n: int) -> dict:
    total = hvd.allreduce_sum(float(r + 1), name="rank_sum")
    torch.manual_seed(100 + r)  # different init per rank: the broadcast must make them equal
    model = torch.nn.Linear(4, 1)
    opt = hvd.distributed_optimizer(torch.optim.SGD(model.parameters(), lr=0.1), model)
    hvd.broadcast_model_and_optimizer(model, opt)
    before = torch.cat([p.detach().flatten() for p in model.parameters()]).clone()
    x = torch.randn(8, 4) * (r + 1)  # different data per rank: averaged gradients keep them equal
    loss = model(x).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    gathered = hvd.allgather(flat.unsqueeze(0), name="weights")
    return {"size": n, "rank_sum": total, "max_weight_diff": float((gathered - gathered[0]).abs().max()),
            "weights_changed": bool((flat - before).abs().max() > 0)}


class Net(torch.nn.Module):
    """A branch only rank 0 takes: rank 1 has no gradient for it and joins the average with zeros."""

    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(10, 4)
        self.out = torch.nn.Linear(4, 1)
        self.only_rank0 = torch.nn.Linear(4, 1)

    def forward(self, ids, rank):
        h = self.emb(ids).mean(1)
        y = self.out(h)
        return y + self.only_rank0(h) if rank == 0 else y


def through_host(r: int, n: int) -> dict:
    torch.manual_seed(7)
    a = Net()
    b = Net()
    b.load_state_dict(a.state_dict())
    opt_a = hvd.distributed_optimizer(torch.optim.SGD(a.parameters(), lr=0.1, momentum=0.9), a)
    opt_b = hvd.distributed_optimizer(torch.optim.SGD(b.parameters(), lr=0.1, momentum=0.9), b, through_host=True)
    start = torch.cat([p.detach().flatten() for p in a.parameters()]).clone()
    gen = torch.Generator().manual_seed(100 + r)  # different data per rank
    for step in range(3):
        ids = torch.randint(0, 10, (8, 3), generator=gen)
        target = torch.randn(8, 1, generator=gen)
        for model, opt in ((a, opt_a), (b, opt_b)):
            opt.zero_grad()
            torch.nn.functional.mse_loss(model(ids, r), target).backward()
            opt.step()
    wa = torch.cat([p.detach().flatten() for p in a.parameters()])
    wb = torch.cat([p.detach().flatten() for p in b.parameters()])
    gathered = hvd.allgather(wb.unsqueeze(0), name="weights_b")
    return {"size": n, "a_vs_b": float((wa - wb).abs().max()), "ranks_b": float((gathered - gathered[0]).abs().max()),
            "moved": float((wa - start).abs().max()), "optimizer": type(opt_b).__name__}


hvd.init()
rank, size = hvd.rank(), hvd.size()
out = {"basics": basics(rank, size), "through_host": through_host(rank, size)}
if rank == 0:
    with open(sys.argv[1], "w") as f:
        json.dump(out, f)
