"""Rendezvous across hosts: a server host and 4 node hosts in network namespaces, with
faults on their links (see :mod:`tests.netlab.lab`). Each scenario runs on redis and
etcd-v3 and checks the invariants of :meth:`Fleet.check_invariants` from the nodes' own
records, plus what the scenario is about."""

from __future__ import annotations

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
