"""pytest plug-in: which servers the integration tests run against, and factories for them.

``RDZV_TEST_SERVERS`` chooses the provider of Redis, Sentinel and etcd servers:

* ``containers`` — Docker containers through testcontainers (:mod:`tests.containers`), of
  ``RDZV_REDIS_IMAGE`` (default ``redis:7``; Sentinel runs from it too) and
  ``RDZV_ETCD_IMAGE`` (default ``quay.io/coreos/etcd:v3.4.34``). A missing engine, or an
  image that is neither present nor pullable, is a pytest usage error naming it;
* ``binaries`` — the local ``redis-server`` / ``redis-sentinel`` / ``etcd`` binaries
  (:class:`rdzv_redis.server.RedisServer`, :class:`rdzv_etcd.server.EtcdServer`); the tests of a
  missing binary are skipped;
* unset (auto) — containers for a server whose image is already present on a Docker engine
  that answers within 2 s, otherwise its local binary.

Either way every server listens on a free port of 127.0.0.1 (containers use the host
network) and has the same interface: ``host``, ``port``, ``endpoint``, ``url``,
``start``/``stop``/``restart``/``kill``; :func:`paused` freezes one (``docker pause`` or
SIGSTOP). No reaper container: ``TESTCONTAINERS_RYUK_DISABLED=true`` is set here. The pytest
header names the provider, e.g. ``test servers: testcontainers (redis:7, quay.io/...)``.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

# testcontainers reads it when it first starts a container; its reaper image is not needed
# (every fixture removes its containers) and cannot be pulled without a registry.
os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")

PROVIDER_ENV = "RDZV_TEST_SERVERS"
REDIS_IMAGE_ENV, ETCD_IMAGE_ENV = "RDZV_REDIS_IMAGE", "RDZV_ETCD_IMAGE"
DEFAULT_REDIS_IMAGE, DEFAULT_ETCD_IMAGE = "redis:7", "quay.io/coreos/etcd:v3.4.34"
CONTAINERS, BINARIES, NONE = "containers", "binaries", "none"


@dataclass(frozen=True)
class Choice:
    """How one kind of server (``"redis"`` or ``"etcd"``) is provided: ``kind`` is
    ``containers`` (``detail`` = the image), ``binaries`` (the binary's path) or ``none`` (why)."""

    kind: str
    detail: str


def image(server: str) -> str:
    """The image of ``server`` (``"redis"`` or ``"etcd"``): ``$RDZV_REDIS_IMAGE`` /
    ``$RDZV_ETCD_IMAGE``, else the public default."""
    if server == "redis":
        return os.environ.get(REDIS_IMAGE_ENV) or DEFAULT_REDIS_IMAGE
    return os.environ.get(ETCD_IMAGE_ENV) or DEFAULT_ETCD_IMAGE


def forced() -> str:
    """``containers``, ``binaries`` or ``""`` (auto) from ``$RDZV_TEST_SERVERS``.

    Raises:
        pytest.UsageError: another value.
    """
    value = os.environ.get(PROVIDER_ENV, "").strip().lower()
    if value not in ("", CONTAINERS, BINARIES):
        raise pytest.UsageError(f"{PROVIDER_ENV}={value!r}: expected 'containers', 'binaries' or unset (auto).")
    return value


@functools.lru_cache(maxsize=1)
def _engine() -> tuple[Any, str]:
    """``(docker client, "")`` when a Docker engine answers a ping within 2 s, else
    ``(None, why not)``. The client is kept for the session."""
    where = os.environ.get("DOCKER_HOST") or "the default socket"
    try:
        import docker

        client = docker.from_env(timeout=2)
        client.ping()
    except Exception as exc:  # no client library, no daemon, no permission: all mean "no engine"
        return None, f"no Docker engine answers at {where} ({type(exc).__name__}: {exc})"
    return client, ""


def _image_present(client: Any, name: str, *, pull: bool) -> str:
    """``""`` when image ``name`` is on the engine (pulled first when ``pull``), else why not."""
    import docker.errors

    try:
        client.images.get(name)
        return ""
    except docker.errors.ImageNotFound:
        if not pull:
            return f"image {name} is not present (docker pull {name})"
    except docker.errors.APIError as exc:
        return f"image {name}: {exc}"
    try:
        client.images.pull(name)
        return ""
    except Exception as exc:  # registry unreachable, unknown image, no permission
        return f"image {name} is not present and could not be pulled ({type(exc).__name__}: {exc})"


def _binary(server: str) -> Choice:
    if server == "redis":
        from rdzv_redis.server import find_redis_server

        path = find_redis_server()
        return Choice(BINARIES, path) if path else Choice(NONE, "no redis-server binary")
    from rdzv_etcd.server import find_etcd_binary

    try:
        return Choice(BINARIES, find_etcd_binary())
    except FileNotFoundError as exc:
        return Choice(NONE, str(exc))


@functools.lru_cache(maxsize=2)
def choose(server: str) -> Choice:
    """The provider of ``server`` (``"redis"`` or ``"etcd"``), decided once per session.

    Raises:
        pytest.UsageError: ``RDZV_TEST_SERVERS=containers`` and no engine or no image.
    """
    mode = forced()
    if mode == BINARIES:
        return _binary(server)
    client, why = _engine()
    name = image(server)
    if client is not None:
        why = _image_present(client, name, pull=mode == CONTAINERS)
    if not why:
        return Choice(CONTAINERS, name)
    if mode == CONTAINERS:
        raise pytest.UsageError(f"{PROVIDER_ENV}=containers, but {why}.")
    return _binary(server)


def describe() -> str:
    """One line for the pytest header: the provider of each server, and the mode."""
    redis, etcd = choose("redis"), choose("etcd")
    mode = f"[{PROVIDER_ENV}={forced() or 'auto'}]"
    if redis.kind == etcd.kind == CONTAINERS:
        return f"testcontainers ({redis.detail}, {etcd.detail}) {mode}"
    if redis.kind == etcd.kind == BINARIES:
        return f"local binaries ({redis.detail}, {etcd.detail}) {mode}"
    label = {CONTAINERS: "testcontainers", BINARIES: "local binary", NONE: "unavailable:"}
    return f"redis {label[redis.kind]} {redis.detail}; etcd {label[etcd.kind]} {etcd.detail} {mode}"


def pytest_configure(config: pytest.Config) -> None:
    if forced() == CONTAINERS:  # a missing engine or image stops the run before any test
        choose("redis")
        choose("etcd")


def pytest_report_header(config: pytest.Config) -> str:
    return f"test servers: {describe()}"


# -- factories ---------------------------------------------------------------------------------


def _provided(server: str) -> str:
    """The kind of ``server``; skips the calling test when there is none."""
    choice = choose(server)
    if choice.kind == NONE:
        pytest.skip(f"{server}: {choice.detail}")
    return choice.kind


def redis_server(**kwargs: Any) -> Any:
    """An unstarted Redis server of the session's provider (``RedisServer`` arguments:
    ``password``, ``replica_of``, ``extra_args``, TLS files...)."""
    from rdzv_redis.server import RedisServer

    if _provided("redis") == CONTAINERS:
        from tests.containers import ContainerRedis

        return ContainerRedis(image("redis"), **kwargs)
    return RedisServer(**kwargs)


def redis_sentinel(master: str, master_name: str = "mymaster", **kwargs: Any) -> Any:
    """An unstarted Sentinel of the session's provider (``RedisSentinel`` arguments); the
    container runs ``redis-sentinel`` from the Redis image."""
    from rdzv_redis.server import RedisSentinel

    if _provided("redis") == CONTAINERS:
        from tests.containers import ContainerSentinel

        return ContainerSentinel(image("redis"), master, master_name, **kwargs)
    return RedisSentinel(master, master_name, **kwargs)


def etcd_server(**kwargs: Any) -> Any:
    """An unstarted etcd of the session's provider (``EtcdServer`` arguments: ``enable_v2``,
    ``data_dir``, TLS files...)."""
    from rdzv_etcd.server import EtcdServer

    if _provided("etcd") == CONTAINERS:
        from tests.containers import ContainerEtcd

        return ContainerEtcd(image("etcd"), **kwargs)
    return EtcdServer(**kwargs)


@contextlib.contextmanager
def paused(server: Any) -> Iterator[None]:
    """Freeze ``server`` for the ``with`` block: ``docker pause``/``unpause`` for a container,
    SIGSTOP/SIGCONT for a local process. Its sockets stay open; nothing answers."""
    from tests.containers import ContainerLauncher

    if isinstance(server, ContainerLauncher):
        server.pause()
        try:
            yield
        finally:
            server.unpause()
        return
    pid = server.pid
    assert pid, f"{server!r} is not running"
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)
