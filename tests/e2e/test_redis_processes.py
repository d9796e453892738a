"""Real node processes rendezvousing through the ``redis`` plug-in of the registry."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from tests.e2e.node_processes import read_line

pytestmark = pytest.mark.e2e
pytest.importorskip("rdzv_core.dynamic")

#: Every wait of these tests is bounded by this (seconds).
BOUND = 60

NODE = r"""
import json, sys, time
from rdzv_core.api import RendezvousParameters
from rdzv_core.registry import get_rendezvous_handler

endpoint, run_id, min_nodes, max_nodes, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
handler = get_rendezvous_handler(RendezvousParameters(
    "redis", endpoint, run_id, min_nodes, max_nodes,
    join_timeout=40, last_call_timeout=0.5, keep_alive_interval=0.2, keep_alive_max_attempt=3))
for round_ in range(rounds):
    if round_:
        deadline = time.monotonic() + 30
        while handler.num_nodes_waiting() == 0:  # a member died: re-rendezvous
            assert time.monotonic() < deadline, "no re-rendezvous requested"
            time.sleep(0.05)
    info = handler.next_rendezvous()
    print(json.dumps({"rank": info.rank, "world_size": info.world_size}), flush=True)
"""


def start_nodes(count, endpoint, run_id, min_nodes, max_nodes, rounds=1):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")])}
    args = [endpoint, run_id, str(min_nodes), str(max_nodes), str(rounds)]
    return [
        subprocess.Popen(
            [sys.executable, "-c", NODE, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        for _ in range(count)
    ]


def test_three_processes_get_ranks_0_1_2(redis_server, redis_run_id, processes):
    processes += start_nodes(3, redis_server.endpoint, redis_run_id, 3, 3)
    results = [read_line(p) for p in processes]
    assert sorted(r["rank"] for r in results) == [0, 1, 2]
    assert {r["world_size"] for r in results} == {3}
    for proc in processes:
        assert proc.wait(BOUND) == 0


def test_killed_process_is_replaced_by_a_smaller_round(redis_server, redis_run_id, processes):
    processes += start_nodes(3, redis_server.endpoint, redis_run_id, 2, 3, rounds=2)
    first = [read_line(p) for p in processes]
    assert sorted(r["rank"] for r in first) == [0, 1, 2]
    victim, survivors = processes[0], processes[1:]
    os.kill(victim.pid, signal.SIGKILL)
    second = [read_line(p) for p in survivors]
    assert sorted(r["rank"] for r in second) == [0, 1]
    assert {r["world_size"] for r in second} == {2}
