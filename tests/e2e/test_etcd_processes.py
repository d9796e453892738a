"""Real node processes rendezvousing through the ``etcd-v2`` / ``etcd-v3`` plug-ins of the
registry: ranks, a node killed with SIGKILL, and an etcd crash while nodes wait."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from tests.e2e.node_processes import read_line
from tests.fixtures_etcd import start_etcd, unique_run_id

pytestmark = pytest.mark.e2e
pytest.importorskip("rdzv_core.dynamic")

#: Every wait of these tests is bounded by this (seconds).
BOUND = 60

# An agent-like node: rendezvous, and for later rounds poll num_nodes_waiting() as torch's
# agent does between health checks.
NODE = r"""
import json, sys, time
from rdzv_core.api import RendezvousParameters
from rdzv_core.registry import get_rendezvous_handler

backend, endpoint, run_id = sys.argv[1:4]
min_nodes, max_nodes, rounds, attempts = map(int, sys.argv[4:8])
handler = get_rendezvous_handler(RendezvousParameters(
    backend, endpoint, run_id, min_nodes, max_nodes, read_timeout=10,
    join_timeout=45, last_call_timeout=0.5, keep_alive_interval=0.2, keep_alive_max_attempt=attempts))
print(json.dumps({"ready": True}), flush=True)
for round_ in range(rounds):
    if round_:
        deadline = time.monotonic() + 30
        while handler.num_nodes_waiting() == 0:
            assert time.monotonic() < deadline, "no re-rendezvous requested"
            time.sleep(0.05)
    info = handler.next_rendezvous()
    print(json.dumps({"rank": info.rank, "world_size": info.world_size}), flush=True)
"""


@pytest.fixture(params=["etcd-v2", "etcd-v3"])
def backend_name(request):
    return request.param


def start_nodes(processes, count, backend, endpoint, run_id, min_nodes, max_nodes, rounds=1, attempts=3):
    """Start ``count`` node processes (keep-alive every 0.2 s; dead after ``attempts`` misses)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")])}
    args = [backend, endpoint, run_id, str(min_nodes), str(max_nodes), str(rounds), str(attempts)]
    new = [
        subprocess.Popen(
            [sys.executable, "-c", NODE, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        for _ in range(count)
    ]
    processes += new
    for proc in new:
        assert read_line(proc) == {"ready": True}
    return new


def wait_for_participants(server, backend_name, run_id, count):
    """Block (bounded) until the run lists ``count`` participants, read as ``rdzv status``
    does (the membership keys on etcd-v3, the state on etcd-v2). Joins below ``min_nodes``
    change no announced transition, so this looks every 50 ms."""
    import time

    from rdzv_core.api import RendezvousParameters
    from rdzv_core.status import read_state
    from rdzv_etcd.backend import create_backend

    observer, _ = create_backend(RendezvousParameters(backend_name, server.endpoint, run_id, 1, 3))
    try:
        deadline = time.monotonic() + BOUND
        while True:
            current = read_state(observer, run_id)
            if current is not None and len(current.participants) >= count:
                return
            assert time.monotonic() < deadline, f"{count} participants never joined"
            time.sleep(0.05)
    finally:
        observer.close()


def test_three_processes_get_ranks_0_1_2(etcd_server, backend_name, processes):
    nodes = start_nodes(processes, 3, backend_name, etcd_server.endpoint, unique_run_id(), 3, 3)
    results = [read_line(p) for p in nodes]
    assert sorted(r["rank"] for r in results) == [0, 1, 2]
    assert {r["world_size"] for r in results} == {3}
    for proc in nodes:
        assert proc.wait(BOUND) == 0


def test_killed_process_is_replaced_by_a_smaller_round(etcd_server, backend_name, processes):
    nodes = start_nodes(processes, 3, backend_name, etcd_server.endpoint, unique_run_id(), 2, 3, rounds=2)
    first = [read_line(p) for p in nodes]
    assert sorted(r["rank"] for r in first) == [0, 1, 2]
    victim, survivors = nodes[0], nodes[1:]
    os.kill(victim.pid, signal.SIGKILL)
    second = [read_line(p) for p in survivors]
    assert sorted(r["rank"] for r in second) == [0, 1]
    assert {r["world_size"] for r in second} == {2}


def test_etcd_crash_while_nodes_wait(backend_name, processes):
    server = start_etcd(enable_v2=True)
    try:
        run_id = unique_run_id()
        # Dead after 50 missed keep-alives (10 s): longer than the outage, so that the nodes
        # do not declare each other dead because etcd was down.
        waiting = start_nodes(processes, 2, backend_name, server.endpoint, run_id, 3, 3, attempts=50)
        wait_for_participants(server, backend_name, run_id, 2)
        server.restart(kill=True)  # the waiting nodes' watches break; they must resume
        late = start_nodes(processes, 1, backend_name, server.endpoint, run_id, 3, 3, attempts=50)
        results = [read_line(p) for p in [*waiting, *late]]
        assert sorted(r["rank"] for r in results) == [0, 1, 2]
    finally:
        server.stop()
