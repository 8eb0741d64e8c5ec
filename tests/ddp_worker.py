"""Run by test_ddp.py under torchrun: fit a SmallNet with DDP (gloo on CPU) and write what each rank ends with."""

import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
import smallnet  # noqa: E402

from edgeopt.training import fit, top1  # noqa: E402

torch.set_num_threads(1)
train, val = smallnet.digits16(size=8)
model = smallnet.make()
res = fit(model, train, epochs=int(sys.argv[2]), lr=0.05, teacher=smallnet.make(seed=1) if len(sys.argv) > 3 else None)
checksum = float(sum(p.double().sum() for p in model.parameters()))
out = {"rank": int(os.environ["RANK"]), "world_size": res.world_size, "top1": top1(model, val),
       "checksum": checksum, "losses": res.losses}
with open(os.path.join(sys.argv[1], f"rank{out['rank']}.json"), "w") as f:
    json.dump(out, f)
