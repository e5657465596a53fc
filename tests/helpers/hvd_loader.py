"""Run under horovodrun: two epochs of ShardedLoader batches over uneven files, one allreduce per batch
(as an optimizer step is), then every rank's row ids gathered; rank 0 writes what it saw.

    hvd_loader.py FILES_JSON BATCH_SIZE OUT_JSON
"""
import json
import sys

import numpy as np
import torch

from sim.adapters import hvd
from sim.training.loader import ShardedLoader

hvd.init()
files = [tuple(f) for f in json.loads(open(sys.argv[1]).read())]
loader = ShardedLoader(files, ["row"], rank=hvd.rank(), size=hvd.size(), batch_size=int(sys.argv[2]), seed=3)
out = {"steps_per_epoch": loader.steps_per_epoch, "epochs": []}
for epoch in (0, 1):
    rows, steps = [], 0
    for batch in loader.epoch(epoch):
        hvd.allreduce_sum(float(len(batch["row"])), name=f"step.{epoch}.{steps}")  # hangs if ranks differ
        rows.append(batch["row"])
        steps += 1
    local = torch.from_numpy(np.concatenate(rows).astype(np.int64))
    seen = hvd.allgather(local, name=f"rows.{epoch}").numpy()
    counts = hvd.allgather(torch.tensor([steps]), name=f"steps.{epoch}").numpy()
    out["epochs"].append({"rows": seen.tolist(), "steps": counts.tolist()})
if hvd.rank() == 0:
    with open(sys.argv[3], "w") as f:
        json.dump(out, f)
