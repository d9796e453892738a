"""pytest plug-in: local Redis Clusters (3 masters + 3 replicas) for the cluster-mode tests.

Fixtures:

* ``redis_cluster`` (session) — a running :class:`rdzv_redis.server.RedisClusterServer`
  that no test damages (rendezvous, store contract, many runs). Skipped without
  ``redis-server``.
* ``own_redis_cluster`` (function) — ``make(node_timeout=1.0, **kwargs)`` -> a private
  cluster for fault injection (``kill``, ``migrate_slot``), stopped at teardown.
* ``cluster_params`` (function) — ``make(cluster, run_id, min_nodes=1, max_nodes=1, **config)``
  -> :class:`RendezvousParameters` with ``cluster=true`` and every node as the endpoint.
* ``cluster_backend_factory`` (function) — ``make(cluster, run_id, **config)`` ->
  ``(backend, store)`` on a client of its own (as one node); closed at teardown.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from rdzv_core.api import RendezvousParameters
from rdzv_redis.server import RedisClusterServer, find_redis_server

#: ``cluster-node-timeout`` (seconds) of the fault-injection clusters: a dead master's
#: replica takes over about 2-4 s after the kill on this machine.
FAULT_NODE_TIMEOUT = 1.0


def _need_binary() -> None:
    if not find_redis_server():
        pytest.skip("No redis-server binary available for a local Redis Cluster.")


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisClusterServer]:
    _need_binary()
    with RedisClusterServer(node_timeout=5.0) as cluster:
        yield cluster


@pytest.fixture
def own_redis_cluster() -> Iterator[Any]:
    _need_binary()
    clusters: list[RedisClusterServer] = []

    def make(node_timeout: float = FAULT_NODE_TIMEOUT, **kwargs: Any) -> RedisClusterServer:
        cluster = RedisClusterServer(node_timeout=node_timeout, **kwargs).start()
        clusters.append(cluster)
        return cluster

    yield make
    for cluster in clusters:
        cluster.stop()


@pytest.fixture
def cluster_params() -> Any:
    def make(
        cluster: RedisClusterServer, run_id: str, min_nodes: int = 1, max_nodes: int = 1, **config: Any
    ) -> RendezvousParameters:
        return RendezvousParameters("redis", cluster.endpoint, run_id, min_nodes, max_nodes, cluster="true", **config)

    return make


@pytest.fixture
def cluster_backend_factory(cluster_params: Any) -> Iterator[Any]:
    from rdzv_redis import create_backend

    made: list[Any] = []

    def make(cluster: RedisClusterServer, run_id: str, **config: Any) -> tuple[Any, Any]:
        backend, store = create_backend(cluster_params(cluster, run_id, **config), shared=False)
        made.extend([backend, store])
        return backend, store

    yield make
    for thing in made:
        thing.close()
