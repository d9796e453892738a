"""pytest plug-in: a real Redis server for the integration and e2e tests.

Fixtures:

* ``redis_server`` (session) — a running Redis of the session's provider (:mod:`tests.servers`:
  a container through testcontainers, or a local ``redis-server``, as ``RDZV_TEST_SERVERS``
  says; the pytest header names it). Tests are skipped when neither is available.
* ``redis_run_id`` (function) — a fresh, unique run id.
* ``redis_params`` (function) — ``make(run_id=None, min_nodes=1, max_nodes=1, **config)`` ->
  :class:`RendezvousParameters` for ``redis_server``.
* ``redis_backend_factory`` (function) — ``make(run_id=None, **config)`` -> ``(backend, store)``
  from :func:`rdzv_redis.create_backend`; everything made is closed at teardown.
* ``redis_raw`` (function) — a plain ``redis.Redis`` on ``redis_server`` for poking at keys.
* ``own_redis_server`` (function) — a private server of the session's provider (a
  ``RedisServer`` or ``ContainerRedis``: ``restart()``, ``kill()``, ``pid``; freeze it with
  :func:`tests.servers.paused`) for fault-injection tests; started on demand:
  ``own_redis_server(password=None, **RedisServer arguments)``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from rdzv_core.api import RendezvousParameters
from rdzv_redis.server import RedisServer
from tests import servers
from tests.containers import ContainerLauncher


@dataclass
class RedisEndpoint:
    """Where the session's Redis listens (the same shape for both kinds of server)."""

    kind: str
    host: str
    port: int

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisEndpoint]:
    with servers.redis_server() as server:
        kind = "testcontainers" if isinstance(server, ContainerLauncher) else "redis-server"
        yield RedisEndpoint(kind, server.host, server.port)


@pytest.fixture
def redis_run_id(request: pytest.FixtureRequest) -> str:
    name = request.node.name.replace("[", "-").replace("]", "")[:40]
    return f"t-{name}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def redis_params(redis_server: RedisEndpoint, redis_run_id: str) -> Any:
    def make(run_id: str | None = None, min_nodes: int = 1, max_nodes: int = 1, **config: Any) -> RendezvousParameters:
        return RendezvousParameters(
            "redis", redis_server.endpoint, run_id or redis_run_id, min_nodes, max_nodes, **config
        )

    return make


@pytest.fixture
def redis_backend_factory(redis_params: Any) -> Iterator[Any]:
    from rdzv_redis import create_backend

    made: list[Any] = []

    def make(run_id: str | None = None, **config: Any) -> tuple[Any, Any]:
        backend, store = create_backend(redis_params(run_id, **config))
        made.extend([backend, store])
        return backend, store

    yield make
    for thing in made:
        thing.close()


@pytest.fixture
def redis_raw(redis_server: RedisEndpoint) -> Iterator[Any]:
    import redis

    client = redis.Redis(host=redis_server.host, port=redis_server.port)
    yield client
    client.close()


@pytest.fixture
def own_redis_server() -> Iterator[Any]:
    started: list[RedisServer] = []

    def make(**kwargs: Any) -> RedisServer:
        server = servers.redis_server(**kwargs)
        started.append(server)
        return server.start()

    yield make
    for server in started:
        server.stop()
