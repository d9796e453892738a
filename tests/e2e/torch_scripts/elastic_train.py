"""torchrun worker for the elastic tests: a gloo all_reduce loop until the test says stop.

Each step all-reduces ``[rank + 1, stop]`` and checks the first sum (``W (W + 1) / 2``); rank 0
sets ``stop`` once the file ``$RDZV_E2E_OUT/stop`` exists, so all ranks leave the loop at the
same step. Written to ``$RDZV_E2E_OUT``:

* ``events.jsonl`` — one line per worker start and finish: event, rank, world size, group
  rank, restart count, node name (``RDZV_E2E_NODE``), pid;
* ``progress.json`` (rank 0, replaced each step) — world size, step, restart count, and the
  node names of the current round.

Exits 1 on a wrong sum; a failed collective (a peer died) raises, which torchrun treats as a
worker failure and answers with a restart.
"""

from __future__ import annotations

import json
import os
import sys
import time
from datetime import timedelta

import torch
import torch.distributed as dist

OUT = os.environ["RDZV_E2E_OUT"]
NODE = os.environ.get("RDZV_E2E_NODE", "?")
STEP_SLEEP = 0.1


def record(event: str, **fields: object) -> None:
    line = json.dumps(
        {
            "event": event,
            "node": NODE,
            "pid": os.getpid(),
            "restart": int(os.environ["TORCHELASTIC_RESTART_COUNT"]),
            **fields,
        }
    )
    with open(os.path.join(OUT, "events.jsonl"), "a") as f:
        f.write(line + "\n")


def main() -> int:
    dist.init_process_group("gloo", timeout=timedelta(seconds=30))
    rank, world_size = dist.get_rank(), dist.get_world_size()
    group_rank = int(os.environ["GROUP_RANK"])
    record("start", rank=rank, world_size=world_size, group_rank=group_rank)

    # The node names of this round, in rank order (for the test's checks).
    names: list[object] = [None] * world_size
    dist.all_gather_object(names, NODE)

    expected = world_size * (world_size + 1) / 2
    step = 0
    while True:
        stop = 1.0 if rank == 0 and os.path.exists(os.path.join(OUT, "stop")) else 0.0
        tensor = torch.tensor([float(rank + 1), stop])
        dist.all_reduce(tensor)
        if tensor[0].item() != expected:
            print(f"rank {rank}: all_reduce sum {tensor[0].item()} != {expected}", file=sys.stderr)
            return 1
        step += 1
        if rank == 0:
            tmp = os.path.join(OUT, f"progress.json.{os.getpid()}")
            with open(tmp, "w") as f:
                json.dump(
                    {
                        "world_size": world_size,
                        "step": step,
                        "restart": int(os.environ["TORCHELASTIC_RESTART_COUNT"]),
                        "nodes": names,
                    },
                    f,
                )
            os.replace(tmp, os.path.join(OUT, "progress.json"))
        if tensor[1].item() > 0:
            break
        time.sleep(STEP_SLEEP)

    record("done", rank=rank, world_size=world_size, group_rank=group_rank, steps=step)
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
