"""Time to form a 4-node round across hosts, at 0, 1, 5 and 20 ms one-way latency between
each node and the server; and the round trips on the critical path that this implies.

Not a test. Needs root (network namespaces; see ``tests/netlab/lab.py``). Each node runs in
a host of its own (``tests/netlab/node.py``); the server (``redis-server``, ``etcd`` or
torch's ``TCPStore`` for torch's own c10d rendezvous) on the server host, whose link gets the
delay both ways, so every node-server message takes the delay each way. A row's time runs
from the moment all four nodes (already started, handlers built) are told to join to the
moment the last one returns from ``next_rendezvous()``; ``min_nodes = max_nodes = 4``, so
the round completes on the fourth join (no last call). Round trips on the critical path:
``(T(d) - T(0)) / (2 d)``.

    python3 benchmarks/netlab_latency.py [--backends redis,etcd-v3,torch-c10d] [--delays-ms 0,1,5,20] [--repeat 3]

Prints a table and writes ``benchmarks/results/netlab_latency.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from tests.netlab.harness import Fleet, LabServer  # noqa: E402
from tests.netlab.lab import Lab, lab_available, sweep_leftovers  # noqa: E402

NODES = ["n0", "n1", "n2", "n3"]
TORCH_PORT = 29400
TORCH_CONFIG = {"join_timeout": 60, "last_call_timeout": 1, "close_timeout": 10, "keep_alive_interval": 1}


class TorchStoreServer:
    """torch's ``TCPStore`` (the c10d rendezvous backend's server) on the lab's ``srv`` host."""

    backend = "torch-c10d"

    def __init__(self, lab: Lab) -> None:
        address = lab.address("srv")
        self.endpoint = f"{address}:{TORCH_PORT}"
        script = (
            "import sys\nfrom datetime import timedelta\nfrom torch.distributed import TCPStore\n"
            f"store = TCPStore({address!r}, {TORCH_PORT}, is_master=True, wait_for_workers=False, timeout=timedelta(seconds=60))\n"
            "print('ready', flush=True)\nsys.stdin.read()\n"
        )
        self.proc = lab.popen("srv", [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if line != "ready":
            self.stop()
            raise RuntimeError(f"TCPStore did not start: {line!r}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


def _form_once(lab: Lab, server: Any, timeout: float) -> float:
    config = TORCH_CONFIG if server.backend == "torch-c10d" else None
    fleet = Fleet(lab, server, NODES, min_nodes=len(NODES), max_nodes=len(NODES), config=config)
    try:
        start = time.monotonic()
        fleet.go()
        fleet.wait_round(set(NODES), timeout=timeout)
        first = min(fleet.rounds().values(), key=lambda got: min(r["t1"] for r in got))
        return max(r["t1"] for r in first) - start
    finally:
        fleet.close()


def run(backends: list[str], delays_ms: list[float], repeat: int, timeout: float) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    sweep_leftovers()
    lab = Lab(nodes=len(NODES)).build()
    try:
        for backend in backends:
            server: Any = TorchStoreServer(lab) if backend == "torch-c10d" else LabServer(lab, backend)
            try:
                base: float | None = None
                for delay_ms in delays_ms:
                    lab.set_both("srv", delay=delay_ms / 1000.0)
                    times = [_form_once(lab, server, timeout) for _ in range(repeat)]
                    median = statistics.median(times)
                    base = median if delay_ms == 0 else base
                    trips = (median - base) / (2 * delay_ms / 1000.0) if delay_ms and base is not None else None
                    row = {
                        "backend": backend, "nodes": len(NODES), "one_way_ms": delay_ms, "repeat": repeat,
                        "times_s": [round(t, 4) for t in times], "median_s": round(median, 4),
                        "round_trips": None if trips is None else round(trips, 1),
                    }  # fmt: skip
                    rows.append(row)
                    print(_line(row), flush=True)
                lab.heal("srv")
            finally:
                server.stop()
    finally:
        lab.teardown()
    return rows


def _line(row: dict[str, Any]) -> str:
    trips = "-" if row["round_trips"] is None else f"{row['round_trips']:.1f}"
    spread = f"{min(row['times_s']):.3f}-{max(row['times_s']):.3f}"
    return f"| {row['backend']} | {row['one_way_ms']:g} | {row['median_s']:.3f} | {spread} | {trips} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", default="redis,etcd-v3,torch-c10d")
    parser.add_argument("--delays-ms", default="0,1,5,20")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--output", default=os.path.join(HERE, "results", "netlab_latency.json"))
    args = parser.parse_args()
    reason = lab_available()
    if reason:
        sys.exit(f"netlab_latency: {reason}")
    backends = [b for b in args.backends.split(",") if b]
    if "torch-c10d" in backends:
        try:
            import torch  # noqa: F401
        except ImportError:
            print("torch is not installed: no torch-c10d rows", file=sys.stderr)
            backends.remove("torch-c10d")
    delays = [float(d) for d in args.delays_ms.split(",") if d]
    if delays and delays[0] != 0:
        delays.insert(0, 0.0)  # the round trips are counted against the 0 ms time
    print("| backend | one-way ms | median s | range s | round trips |\n|---|---|---|---|---|", flush=True)
    rows = run(backends, delays, args.repeat, args.timeout)
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "w") as handle:
        json.dump({"machine": platform.platform(), "cpus": os.cpu_count(), "rows": rows}, handle, indent=1)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
