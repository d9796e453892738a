"""pytest plug-in: a real etcd server and helpers for the etcd tests.

* ``etcd_server`` (session): etcd with the v2 API enabled, of the session's provider
  (:mod:`tests.servers`: a container through testcontainers, or the local ``etcd`` binary
  through :class:`rdzv_etcd.server.EtcdServer`, as ``RDZV_TEST_SERVERS`` says; the pytest
  header names it). Tests needing etcd are skipped when neither is available.
* ``etcd_api`` — parametrizes a test over ``"v2"`` and ``"v3"``.
* ``make_etcd`` — a factory ``(api, run_id=None, **config) -> (backend, store)`` for fresh
  runs; everything it creates is closed at the end of the test.
* ``unique_run_id()``, ``etcd_params()``, ``raw_put()`` — plain helpers.
* ``private_etcd(prefix)`` — a context manager: a private etcd of the session's provider whose
  data dir is on tmpfs when there is one, for tests that freeze (:func:`tests.servers.paused`),
  kill or wipe it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from rdzv_core.api import RendezvousParameters
from tests import servers


@contextlib.contextmanager
def private_etcd(prefix: str, *, enable_v2: bool = False) -> Iterator[Any]:
    """Yield a private, started etcd of the session's provider (an
    :class:`rdzv_etcd.server.EtcdServer` or :class:`tests.containers.ContainerEtcd`; skips the
    test when there is none). Its data dir, ``server.data_dir``, is on tmpfs when there is
    one: etcd fsyncs every write. Stopped and removed at the end."""
    base = tempfile.mkdtemp(prefix=f"rdzv-etcd-{prefix}-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    server = None
    try:
        server = servers.etcd_server(enable_v2=enable_v2, data_dir=os.path.join(base, "data"))
        server.start()
        yield server
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(base, ignore_errors=True)


def unique_run_id(prefix: str = "run") -> str:
    """A run id no other test uses (``<prefix>-<12 hex>``)."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def etcd_params(
    server: Any, api: str, run_id: str | None = None, min_nodes: int = 1, max_nodes: int = 8, **config: Any
) -> RendezvousParameters:
    """Rendezvous parameters of backend ``etcd-<api>`` on ``server`` (short read timeout)."""
    config.setdefault("read_timeout", 10)
    return RendezvousParameters(
        f"etcd-{api}", server.endpoint, run_id or unique_run_id(), min_nodes, max_nodes, **config
    )


def raw_put(server: Any, api: str, key: str, value: bytes) -> None:
    """Write ``value`` into ``key`` bypassing rdzv (v2: as a latin-1 string), for corruption tests."""
    if api == "v2":
        import etcd

        etcd.Client(host=server.host, port=server.port, read_timeout=10).write(key, value.decode("latin-1"))
    else:
        import etcd3gw

        etcd3gw.client(host=server.host, port=server.port, timeout=10).put(key, value)


# -- which etcd ---------------------------------------------------------------------------


def etcd_provider() -> tuple[str, str]:
    """``(kind, detail)`` of the session's etcd: kind ``containers`` (detail: the image),
    ``binaries`` (the binary's path) or ``none`` (why); see :func:`tests.servers.choose`."""
    choice = servers.choose("etcd")
    return choice.kind, choice.detail


def start_etcd(enable_v2: bool = True) -> Any:
    """Start an etcd the way ``etcd_server`` does (container or binary); the caller stops it."""
    return servers.etcd_server(enable_v2=enable_v2).start()


# -- fixtures -----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def etcd_server() -> Iterator[Any]:
    """A session-wide etcd with the v2 API enabled (``host``, ``port``, ``endpoint``, ``url``)."""
    server = start_etcd(enable_v2=True)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["v2", "v3"])
def etcd_api(request: pytest.FixtureRequest) -> str:
    """``"v2"`` or ``"v3"``."""
    return str(request.param)


@pytest.fixture
def make_etcd(etcd_server: Any) -> Iterator[Callable[..., Any]]:
    """Factory ``(api, run_id=None, **config) -> (backend, store)`` on ``etcd_server``."""
    from rdzv_etcd.backend import create_backend

    created: list[Any] = []

    def make(api: str, run_id: str | None = None, **config: Any) -> Any:
        backend, store = create_backend(etcd_params(etcd_server, api, run_id, **config))
        created.append(backend)
        return backend, store

    yield make
    for backend in created:
        backend.close()
