"""pytest plug-in: a real Redis server for the integration and e2e tests.

Fixtures:

* ``redis_server`` (session) — a running Redis: a testcontainers ``RedisContainer`` when a
  Docker engine answers a ping within a second, otherwise a local
  :class:`rdzv_redis.server.RedisServer` (``redis-server`` from PATH). Which one is used is
  printed in the pytest header. Tests are skipped when neither is available.
* ``redis_run_id`` (function) — a fresh, unique run id.
* ``redis_params`` (function) — ``make(run_id=None, min_nodes=1, max_nodes=1, **config)`` ->
  :class:`RendezvousParameters` for ``redis_server``.
* ``redis_backend_factory`` (function) — ``make(run_id=None, **config)`` -> ``(backend, store)``
  from :func:`rdzv_redis.create_backend`; everything made is closed at teardown.
* ``redis_raw`` (function) — a plain ``redis.Redis`` on ``redis_server`` for poking at keys.
* ``own_redis_server`` (function) — a private ``RedisServer`` (with ``restart()``/``kill()``)
  for fault-injection tests; started on demand: ``own_redis_server(password=None)``.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from rdzv_core.api import RendezvousParameters
from rdzv_redis.server import RedisServer, find_redis_server


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


@functools.lru_cache(maxsize=1)
def _server_kind() -> str:
    """``"testcontainers"``, ``"redis-server"`` or ``"none"`` (decided once per session)."""
    try:
        import docker

        docker.from_env(timeout=1).ping()
        return "testcontainers"
    except Exception:  # no client, no daemon, no permission: fall back to the local binary
        pass
    return "redis-server" if find_redis_server() else "none"


def pytest_report_header(config: pytest.Config) -> str:
    kind = _server_kind()
    where = {
        "testcontainers": "testcontainers RedisContainer (Docker engine reachable)",
        "redis-server": f"local redis-server ({find_redis_server()}) via rdzv_redis.server.RedisServer",
        "none": "none found (Redis tests will be skipped)",
    }[kind]
    return f"redis server: {where}"


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisEndpoint]:
    kind = _server_kind()
    if kind == "testcontainers":
        from testcontainers.redis import RedisContainer

        with RedisContainer("redis:7") as container:
            yield RedisEndpoint(kind, container.get_container_host_ip(), int(container.get_exposed_port(6379)))
    elif kind == "redis-server":
        with RedisServer() as server:
            yield RedisEndpoint(kind, server.host, server.port)
    else:
        pytest.skip("Neither a Docker engine nor a redis-server binary is available.")


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
    if not find_redis_server():
        pytest.skip("No redis-server binary available for a private server.")
    servers: list[RedisServer] = []

    def make(**kwargs: Any) -> RedisServer:
        server = RedisServer(**kwargs).start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()
