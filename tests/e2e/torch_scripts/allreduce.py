"""torchrun worker: a gloo all_reduce whose sum every rank checks.

Environment (set by torchrun): RANK, WORLD_SIZE, LOCAL_RANK, GROUP_RANK, MASTER_ADDR,
MASTER_PORT, TORCHELASTIC_RUN_ID, TORCHELASTIC_RESTART_COUNT. ``RDZV_E2E_OUT``: a directory
where each worker writes ``rank<R>.json`` with what it saw. Exits 1 on a wrong sum.
"""

from __future__ import annotations

import json
import os
import sys
from datetime import timedelta

import torch
import torch.distributed as dist


def main() -> int:
    dist.init_process_group("gloo", timeout=timedelta(seconds=60))
    rank, world_size = dist.get_rank(), dist.get_world_size()
    tensor = torch.tensor([float(rank + 1)])
    dist.all_reduce(tensor)
    expected = world_size * (world_size + 1) / 2
    record = {
        "rank": rank,
        "world_size": world_size,
        "group_rank": int(os.environ["GROUP_RANK"]),
        "local_rank": int(os.environ["LOCAL_RANK"]),
        "master": f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}",
        "use_agent_store": os.environ.get("TORCHELASTIC_USE_AGENT_STORE"),
        "sum": tensor.item(),
        "expected": expected,
    }
    out = os.environ.get("RDZV_E2E_OUT")
    if out:
        with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
            json.dump(record, f)
    dist.barrier()
    dist.destroy_process_group()
    if tensor.item() != expected:
        print(f"rank {rank}: all_reduce sum {tensor.item()} != {expected}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
