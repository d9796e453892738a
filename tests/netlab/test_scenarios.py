"""Rendezvous across hosts: a server host and 4 node hosts in network namespaces, with
faults on their links (see :mod:`tests.netlab.lab`). Each scenario runs on redis and
etcd-v3 and checks the invariants of :meth:`Fleet.check_invariants` from the nodes' own
records, plus what the scenario is about."""

from __future__ import annotations

import signal
import time

import pytest

from tests.netlab.harness import DEAD_AFTER_S

pytestmark = pytest.mark.netlab

ALL = {"n0", "n1", "n2", "n3"}


def test_baseline(fleet):
    nodes = fleet()
    nodes.go()
    nodes.wait_round(ALL)
    nodes.settle(1.0)
    assert len(nodes.rounds()) == 1, nodes.dump()
    nodes.check_idle_traffic()
    nodes.check_invariants(allowed_errors=set())


def test_latency_20ms(lab, fleet):
    for host in lab.hosts:
        lab.set_both(host, delay=0.010, jitter=0.0025)  # 20 +- 5 ms each way between node and server
    nodes = fleet()
    nodes.go()
    nodes.wait_round(ALL, timeout=30)
    nodes.settle(2 * DEAD_AFTER_S)  # keep-alives keep up: nobody declared dead
    assert len(nodes.rounds()) == 1, nodes.dump()
    nodes.check_invariants(allowed_errors=set())


#: Errors a node may see while its link, or the server, is down.
OUTAGE_ERRORS = {
    "rdzv_core.api.RendezvousConnectionError",
    "rdzv_core.api.RendezvousTimeoutError",
    "rdzv_core.store.StoreTimeoutError",
}


def test_loss_5_percent(lab, fleet):
    for host in ALL:
        lab.set_both(host, loss=0.05)
    nodes = fleet()
    nodes.go()
    nodes.wait_round(ALL, timeout=30)
    nodes.settle(DEAD_AFTER_S)
    lab.heal()
    nodes.wait_settled(ALL)  # lost keep-alives may re-form the round, but it forms with all
    nodes.check_invariants(allowed_errors=OUTAGE_ERRORS)


def _excluded_then_rejoins(lab, nodes, host, cut, heal):
    """``cut()`` isolates ``host`` for longer than the dead-node timeout: the others form a
    round without it; after ``heal()`` it joins again and all four share one round."""
    nodes.go()
    nodes.wait_round(ALL)
    nodes.wait_settled(ALL)
    cut_at = time.monotonic()
    cut()
    try:
        nodes.wait_round(ALL - {host}, timeout=DEAD_AFTER_S + 15, after=cut_at)
    finally:
        heal()
    healed_at = time.monotonic()
    nodes.wait_round(ALL, timeout=30, after=healed_at)
    nodes.wait_settled(ALL)
    nodes.check_idle_traffic()
    nodes.check_invariants(allowed_errors=OUTAGE_ERRORS)


def test_node_partitioned_past_dead_timeout(lab, fleet):
    nodes = fleet()
    _excluded_then_rejoins(lab, nodes, "n3", lambda: lab.set_both("n3", drop=True), lambda: lab.heal("n3"))


def test_uplink_one_way_partition(lab, fleet):
    """Only the node's uplink drops (what it sends never arrives; what the server sends does)."""
    nodes = fleet()
    _excluded_then_rejoins(lab, nodes, "n1", lambda: lab.set_link("n1", up={"drop": True}), lambda: lab.heal("n1"))


def test_node_sigstopped_past_dead_timeout(lab, fleet):
    nodes = fleet()
    _excluded_then_rejoins(
        lab, nodes, "n2", lambda: nodes.signal("n2", signal.SIGSTOP), lambda: nodes.signal("n2", signal.SIGCONT)
    )


def test_server_partitioned_shorter_than_dead_timeout(lab, fleet):
    nodes = fleet()
    nodes.go()
    first = nodes.wait_round(ALL)
    nodes.wait_settled(ALL)
    with lab.faults(["srv"], drop=True):
        nodes.settle(DEAD_AFTER_S * 0.4)
    nodes.settle(DEAD_AFTER_S)  # the keep-alives queued in the outage arrive; nobody is declared dead
    assert nodes.wait_settled(ALL) == first, nodes.dump()
    assert set(nodes.rounds()) == {first}, nodes.dump()
    nodes.check_idle_traffic()
    nodes.check_invariants(allowed_errors=OUTAGE_ERRORS)


def test_flapping_link(lab, fleet):
    nodes = fleet()
    nodes.go()
    nodes.wait_round(ALL)
    for _ in range(5):
        with lab.faults(["n2"], drop=True):
            nodes.settle(0.4)
        nodes.settle(0.6)
    nodes.wait_settled(ALL)
    nodes.check_idle_traffic()
    nodes.check_invariants(allowed_errors=OUTAGE_ERRORS)


def test_server_restarted_empty_while_a_node_is_queued(lab, server, fleet):
    nodes = fleet(["n0", "n1", "n2"], min_nodes=4)
    nodes.go()
    nodes.wait_for("three nodes joining", lambda rs: len({r["host"] for r in rs if r["ev"] == "joining"}) == 3, 30)
    nodes.settle(1.0)  # their joins reach the server (a few ms on this link)
    assert not nodes.rounds(), nodes.dump()
    server.restart_empty()
    restarted_at = time.monotonic()
    nodes.start("n3", go=True)
    nodes.wait_round(ALL, timeout=30, after=restarted_at)
    nodes.wait_settled(ALL)
    nodes.check_idle_traffic()
    nodes.check_invariants(allowed_errors=OUTAGE_ERRORS)


def test_server_restarted_empty_while_the_round_is_complete(lab, server, fleet):
    nodes = fleet()
    nodes.go()
    first = nodes.wait_round(ALL)
    nodes.wait_settled(ALL)
    server.restart_empty()
    restarted_at = time.monotonic()
    second = nodes.wait_round(ALL, timeout=30, after=restarted_at)  # the nodes notice their round is gone
    assert second != first
    nodes.wait_settled(ALL)
    nodes.check_idle_traffic()
    nodes.check_invariants(allowed_errors=OUTAGE_ERRORS)
