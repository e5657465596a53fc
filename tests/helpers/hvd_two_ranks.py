"""Run under horovodrun: an allreduce and one distributed optimizer step; rank 0 checks the result."""
import json
import sys

import torch

from sim.adapters import hvd

hvd.init()
r, n = hvd.rank(), hvd.size()
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
if r == 0:
    out = {"size": n, "rank_sum": total,
           "max_weight_diff": float((gathered - gathered[0]).abs().max()),
           "weights_changed": bool((flat - before).abs().max() > 0)}
    with open(sys.argv[1], "w") as f:
        json.dump(out, f)
