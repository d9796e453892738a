"""A small "training" program for ``rdzv run``: no torch, just ranks and the shared store.

Each step is a tiny all-reduce through the round's store: every rank adds ``rank + 1`` to the
counter ``sum/<step>`` and ``1`` to ``arrived/<step>``; the rank that completes the count sets
``go/<step>``, which all ranks wait for; rank 0 then checks that the sum is
``world_size * (world_size + 1) / 2`` and fails (exit 1) if not. With ``--checkpoint FILE``
rank 0 records the last finished step, and a restarted round resumes after it.

Run it on one machine with nothing set up::

    rdzv run --standalone -- python examples/train.py --steps 5

Options (all optional):

    --steps N            steps to run (default 10)
    --step-time S        seconds of "work" per step (default 0.2)
    --checkpoint FILE    resume from / record progress in FILE (JSON)
    --fail-once MARKER   if MARKER does not exist: create it and exit 1 at --fail-step
                         on rank --fail-rank (to exercise restarts)
    --fail-step K        (default 1)
    --fail-rank R        (default 0)

Exit codes: 0 done; 1 a check failed or an injected failure; 2 not started by ``rdzv run``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

try:
    from rdzv_core.agent import WorkerEnv, open_worker_store
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    from rdzv_core.agent import WorkerEnv, open_worker_store


def _log(env: WorkerEnv, message: str) -> None:
    print(f"[train round={env.round} rank={env.rank}/{env.world_size} pid={os.getpid()}] {message}", flush=True)


def _read_checkpoint(path: str | None) -> int:
    if not path or not os.path.exists(path):
        return 0
    with open(path, encoding="utf-8") as handle:
        return int(json.load(handle).get("next_step", 0))


def _write_checkpoint(path: str, next_step: int) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump({"next_step": next_step, "time": time.time()}, handle)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A tiny elastic job for 'rdzv run'.")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--step-time", type=float, default=0.2)
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--fail-once", default=None, metavar="MARKER")
    parser.add_argument("--fail-step", type=int, default=1)
    parser.add_argument("--fail-rank", type=int, default=0)
    args = parser.parse_args(argv)

    try:
        env = WorkerEnv.from_environ()
    except (KeyError, ValueError):
        print(
            "train.py: RANK/WORLD_SIZE are not set; start me with 'rdzv run ... -- python examples/train.py'",
            file=sys.stderr,
        )
        return 2
    try:
        store = open_worker_store(timeout=60)
    except (KeyError, ValueError) as exc:  # e.g. the in-process 'memory' backend
        store = None
        _log(env, f"no shared store ({exc}); steps run without the all-reduce check")

    start = _read_checkpoint(args.checkpoint)
    _log(
        env,
        f"starting at step {start} of {args.steps} (restart count {env.restart_count}, master {env.master_addr}:{env.master_port})",
    )
    expected = env.world_size * (env.world_size + 1) // 2
    try:
        for step in range(start, args.steps):
            if (
                args.fail_once
                and env.rank == args.fail_rank
                and step == args.fail_step
                and not os.path.exists(args.fail_once)
            ):
                open(args.fail_once, "w").close()
                _log(env, f"injected failure at step {step}")
                return 1
            time.sleep(args.step_time)
            if store is not None:
                store.add(f"sum/{step}", env.rank + 1)
                if store.add(f"arrived/{step}", 1) == env.world_size:
                    store.set(f"go/{step}", b"1")
                store.wait([f"go/{step}"])
                if env.rank == 0:
                    total = int(store.get(f"sum/{step}"))
                    if total != expected:
                        _log(env, f"step {step}: sum {total} != expected {expected}")
                        return 1
            if env.rank == 0 and args.checkpoint:
                _write_checkpoint(args.checkpoint, step + 1)
            _log(env, f"step {step} done" + (f" (sum {expected} ok)" if store is not None and env.rank == 0 else ""))
    finally:
        if store is not None:
            store.close()
    _log(env, "finished")
    return 0


if __name__ == "__main__":
    sys.exit(main())
