"""Interop: torch's own ``EtcdRendezvousHandler`` and rdzv's ``etcd`` backend in one
rendezvous on etcd v2 (torch's default TTLs and key layout), each node a process of its own.

* 2 torch nodes + 2 rdzv nodes form one round with consistent ranks, in both join orders
  (each node writes its name under ``id/<rank>`` in the round's store and reads all of them,
  so every node prints the same rank -> name map);
* a torch node is killed with SIGKILL; a new torch node arrives and waits; the others
  re-rendezvous; after the dead node's keep-alive lapses (torch's 10 s) version 2 holds the
  survivors and the newcomer.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest

from rdzv_etcd.client import EtcdConfig
from rdzv_etcd.legacy.protocol import decode_state
from rdzv_etcd.legacy.v2 import V2Transport
from tests.legacy_node import LegacyNodeProcess

pytestmark = [pytest.mark.integration, pytest.mark.slow]
pytest.importorskip("torch", reason="the interop tests run torch's own handler")
pytest.importorskip("etcd", reason="torch's handler needs python-etcd")

#: Both sides use torch's defaults (TTLs); only the overall timeout is shorter.
CONFIG = {"timeout": 90, "last_call_timeout": 5}
#: Bound of every wait: starting a process that imports torch takes seconds on a busy machine.
BOUND = 60.0


def _spec(server: Any, run_id: str, impl: str, name: str, rounds: int) -> dict[str, Any]:
    return {
        "impl": impl,
        "endpoint": server.endpoint,
        "run_id": run_id,
        "min": 4,
        "max": 4,
        "name": name,
        "config": CONFIG,
        "rounds": rounds,
        "bound": 120,
    }


def _participants(server: Any, run_id: str) -> int:
    transport = V2Transport(EtcdConfig.from_endpoint(server.endpoint, {"read_timeout": 10}))
    try:
        node, _ = transport.read(f"/torchelastic/p2p/run_{run_id}/rdzv/active_version")
        return 0 if node is None else len(decode_state(node).get("participants", []))
    finally:
        transport.close()


def _same_round(events: list[dict[str, Any]], names: set[str]) -> None:
    assert len({tuple(e["members"]) for e in events}) == 1, events
    members = events[0]["members"]
    assert set(members) == names and {e["world_size"] for e in events} == {len(names)}
    assert all(members[e["rank"]] == e["name"] for e in events), events


@pytest.mark.parametrize("first", ["torch", "rdzv"])
def test_two_torch_and_two_rdzv_nodes_form_one_round(first, etcd_server):
    run = f"interop-{uuid.uuid4().hex[:10]}"
    impls = {"torch": "torch", "rdzv": "etcd"}
    second = "rdzv" if first == "torch" else "torch"
    nodes: list[LegacyNodeProcess] = []
    try:
        for i in range(2):
            nodes.append(LegacyNodeProcess(**_spec(etcd_server, run, impls[first], f"{first}{i}", 1)))
        for node in nodes:
            node.next_event(BOUND)
        deadline = time.monotonic() + BOUND
        while _participants(etcd_server, run) < 2:  # the first two joined before the others start
            assert time.monotonic() < deadline, "the first two nodes did not join"
            time.sleep(0.1)
        for i in range(2):
            nodes.append(LegacyNodeProcess(**_spec(etcd_server, run, impls[second], f"{second}{i}", 1)))
        for node in nodes[2:]:
            node.next_event(BOUND)  # ready
        rounds = [node.next_event(BOUND) for node in nodes]
        _same_round(rounds, {"torch0", "torch1", "rdzv0", "rdzv1"})
        ranks_of = {e["name"]: e["rank"] for e in rounds}
        assert {ranks_of[f"{first}0"], ranks_of[f"{first}1"]} == {0, 1}  # joined first: ranks 0 and 1
    finally:
        for node in nodes:
            node.close()


def test_killed_torch_node_is_replaced_by_a_new_torch_node(etcd_server):
    run = f"interop-{uuid.uuid4().hex[:10]}"
    names = {"torch0": "torch", "torch1": "torch", "rdzv0": "etcd", "rdzv1": "etcd"}
    nodes = {name: LegacyNodeProcess(**_spec(etcd_server, run, impl, name, 2)) for name, impl in names.items()}
    newcomer = None
    try:
        for node in nodes.values():
            node.next_event(BOUND)
        _same_round([node.next_event(BOUND) for node in nodes.values()], set(names))
        nodes["torch0"].kill()
        newcomer = LegacyNodeProcess(**_spec(etcd_server, run, "torch", "torch2", 1))
        newcomer.next_event(BOUND)
        survivors = [nodes[name] for name in ("torch1", "rdzv0", "rdzv1")]
        second = [node.next_event(BOUND) for node in [*survivors, newcomer]]
        _same_round(second, {"torch1", "rdzv0", "rdzv1", "torch2"})
    finally:
        for node in [*nodes.values(), *([newcomer] if newcomer else [])]:
            node.close()
