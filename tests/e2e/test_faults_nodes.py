"""kill -9 of a node process, with the time to remove it measured against its bound.

Three real node processes (the registry's ``redis``, ``etcd-v3`` and ``etcd-v2`` handlers)
form a round with ``keep_alive_interval=0.5`` and ``keep_alive_max_attempt=2``: a node is dead
after 1 s without a keep-alive. One is killed with SIGKILL; each survivor reports (wall clock,
same host) when ``num_nodes_waiting()`` turned positive, and then forms the next round without
it. Detection must come no sooner than the victim's last keep-alive allows, and no later than
``interval * attempts + interval`` (the sweep's granularity) plus slack for a loaded machine.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

import pytest

from tests.e2e.node_processes import read_line

pytestmark = pytest.mark.e2e

INTERVAL, ATTEMPTS = 0.5, 2
DEAD_AFTER = INTERVAL * ATTEMPTS
#: Allowance for a loaded 2-core machine (scheduling, a slow backend call).
SLACK = 1.5
#: Every wait of these tests is bounded by this (seconds).
BOUND = 60

NODE = r"""
import json, sys, time
from rdzv_core.api import RendezvousParameters
from rdzv_core.registry import get_rendezvous_handler

backend, endpoint, run_id, interval, attempts = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]), int(sys.argv[5])
handler = get_rendezvous_handler(RendezvousParameters(
    backend, endpoint, run_id, 2, 3, local_addr="127.0.0.1", read_timeout=10, join_timeout=40,
    last_call_timeout=0.3, keep_alive_interval=interval, keep_alive_max_attempt=attempts))
info = handler.next_rendezvous()
print(json.dumps({"rank": info.rank, "world_size": info.world_size}), flush=True)
deadline = time.monotonic() + 30
while handler.num_nodes_waiting() == 0:  # what an agent polls between health checks
    assert time.monotonic() < deadline, "the dead node was never reported"
    time.sleep(0.02)
print(json.dumps({"waiting_at": time.time()}), flush=True)
info = handler.next_rendezvous()
print(json.dumps({"rank": info.rank, "world_size": info.world_size}), flush=True)
"""


@pytest.fixture(params=["redis", "etcd-v3", "etcd-v2"])
def backend_endpoint(request):
    if request.param == "redis":
        return "redis", request.getfixturevalue("redis_server").endpoint
    return request.param, request.getfixturevalue("etcd_server").endpoint


def test_kill9_node_is_removed_within_its_bound_and_a_new_round_forms(backend_endpoint, processes):
    backend, endpoint = backend_endpoint
    run_id = f"kill9-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")])}
    args = [backend, endpoint, run_id, str(INTERVAL), str(ATTEMPTS)]
    processes += [
        subprocess.Popen(
            [sys.executable, "-c", NODE, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        for _ in range(3)
    ]
    first = [read_line(p) for p in processes]
    assert sorted(r["rank"] for r in first) == [0, 1, 2] and {r["world_size"] for r in first} == {3}
    time.sleep(2 * INTERVAL)  # a couple of keep-alives: the round runs

    victim, survivors = processes[0], processes[1:]
    killed_at = time.time()
    os.kill(victim.pid, signal.SIGKILL)
    detected = [read_line(p)["waiting_at"] - killed_at for p in survivors]
    second = [read_line(p) for p in survivors]
    print(
        f"\n[measured] {backend}: kill -9 noticed after {min(detected):.2f}-{max(detected):.2f} s (dead after {DEAD_AFTER} s, interval {INTERVAL} s)"
    )

    # Not before the victim's last keep-alive (at most one interval before the kill) aged
    # DEAD_AFTER; not later than DEAD_AFTER plus one sweep interval, plus slack.
    assert min(detected) >= DEAD_AFTER - INTERVAL - 0.2
    assert max(detected) <= DEAD_AFTER + INTERVAL + SLACK
    assert sorted(r["rank"] for r in second) == [0, 1] and {r["world_size"] for r in second} == {2}
