"""Run under horovodrun: a few SGD steps (with momentum; unlike Adam's, its steps scale with the
gradients, so a wrong average shows) of one model with Horovod's DistributedOptimizer and of a copy
with the through-host averaging (the path of a model on a GPU with a CPU build of Horovod, here on CPU
tensors); rank 0 writes how far apart the two are, and the ranks, at the end."""
import json
import sys

import torch

from sim.adapters import hvd


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


hvd.init()
r = hvd.rank()
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
if r == 0:
    with open(sys.argv[1], "w") as f:
        json.dump({"size": hvd.size(), "a_vs_b": float((wa - wb).abs().max()),
                   "ranks_b": float((gathered - gathered[0]).abs().max()),
                   "moved": float((wa - start).abs().max()), "optimizer": type(opt_b).__name__}, f)
