"""Fixtures of the network lab: ``lab`` (one per session), ``backend`` (redis, etcd-v3),
``server`` (the backend's server on the lab's ``srv`` host) and ``fleet`` (a factory of node
processes on the node hosts). Skipped, with the reason, where network namespaces cannot be
used (not root, no ``ip``, namespaces not allowed)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.netlab.harness import Fleet, LabServer
from tests.netlab.lab import Lab, lab_available, sweep_leftovers


@pytest.fixture(scope="session")
def lab() -> Iterator[Lab]:
    reason = lab_available()
    if reason:
        pytest.skip(reason)
    sweep_leftovers()
    built = Lab(nodes=4).build()
    try:
        yield built
    finally:
        built.teardown()


@pytest.fixture(params=["redis", "etcd-v3"])
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    if name == "redis":
        from rdzv_redis.server import find_redis_server

        if find_redis_server() is None:
            pytest.skip("no redis-server binary")
    else:
        import shutil

        if shutil.which("etcd") is None:
            pytest.skip("no etcd binary")
    return name


@pytest.fixture
def server(lab: Lab, backend: str) -> Iterator[LabServer]:
    started = LabServer(lab, backend)
    try:
        yield started
    finally:
        started.stop()
        lab.heal()


@pytest.fixture
def fleet(lab: Lab, server: LabServer) -> Iterator[Callable[..., Fleet]]:
    made: list[Fleet] = []

    def make(hosts: list[str] | None = None, min_nodes: int = 3, max_nodes: int = 4, **kwargs: Any) -> Fleet:
        created = Fleet(lab, server, hosts if hosts is not None else lab.hosts[1:], min_nodes, max_nodes, **kwargs)
        made.append(created)
        return created

    try:
        yield make
    finally:
        for created in made:
            created.close()
