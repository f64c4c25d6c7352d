"""Run by tests/test_distributed.py under torchrun: QAT under DDP with gloo."""

import json
import os
import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

import hwquant
from hwquant.models import DigitsCNN
from hwquant.spec import A4U, W4, Recipe


def main(out_path: str) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)  # identical initial weights on every rank
    model = hwquant.quantize(DigitsCNN(channels=4), Recipe.uniform(weights=W4, activations=A4U))
    ddp = DDP(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(100 + rank)  # different data on every rank
    for _ in range(4):
        x = torch.randn(16, 1, 8, 8, generator=g)
        y = torch.randint(0, 10, (16,), generator=g)
        loss = F.cross_entropy(ddp(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    # parameters (incl. learned scales); BN running stats are synced at the next forward
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    gathered = [torch.zeros_like(flat) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, flat)
    if rank == 0:
        diff = max(float((gathered[0] - t).abs().max()) for t in gathered)
        with open(out_path, "w") as f:
            json.dump(
                {
                    "max_replica_difference": diff,
                    "numel": flat.numel(),
                    "loss": float(loss.detach()),
                },
                f,
            )
    dist.barrier()
    dist.destroy_process_group()
    # gloo's background threads occasionally abort during interpreter teardown
    # ("terminate called without an active exception", ~1 run in 16): the work is
    # done and written, so leave without running destructors.
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main(sys.argv[1])
