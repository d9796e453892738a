"""pytest plug-in: a real etcd server and helpers for the etcd tests.

* ``etcd_server`` (session): etcd with the v2 API enabled — in a container through
  testcontainers when a Docker engine answers within a second or two, otherwise the local
  ``etcd`` binary through :class:`rdzv_etcd.server.EtcdServer`. The choice is printed in
  pytest's header. ``RDZV_ETCD_PROVIDER=binary|docker`` forces one. Tests needing etcd are
  skipped when neither is available.
* ``etcd_api`` — parametrizes a test over ``"v2"`` and ``"v3"``.
* ``make_etcd`` — a factory ``(api, run_id=None, **config) -> (backend, store)`` for fresh
  runs; everything it creates is closed at the end of the test.
* ``unique_run_id()``, ``etcd_params()``, ``raw_put()`` — plain helpers.
* ``private_etcd(prefix)`` — a context manager: a private etcd (local binary) whose data dir
  is on tmpfs when there is one, for tests that freeze, kill or wipe it.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from rdzv_core.api import RendezvousParameters

ETCD_IMAGE = os.environ.get("RDZV_ETCD_IMAGE", "quay.io/coreos/etcd:v3.5.17")
PROVIDER_ENV = "RDZV_ETCD_PROVIDER"


@contextlib.contextmanager
def private_etcd(prefix: str, *, enable_v2: bool = False) -> Iterator[Any]:
    """Yield a private, started :class:`rdzv_etcd.server.EtcdServer` (skips the test when there
    is no etcd binary). Its data dir, ``server.data_dir``, is on tmpfs when there is one: etcd
    fsyncs every write. Stopped and removed at the end."""
    from rdzv_etcd.server import EtcdServer

    base = tempfile.mkdtemp(prefix=f"rdzv-etcd-{prefix}-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    try:
        server = EtcdServer(enable_v2=enable_v2, data_dir=os.path.join(base, "data")).start()
    except FileNotFoundError as exc:
        shutil.rmtree(base, ignore_errors=True)
        pytest.skip(str(exc))
    try:
        yield server
    finally:
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


@functools.lru_cache(maxsize=1)
def _docker_reachable() -> bool:
    """Whether a Docker engine answers a ping within ~2 s (any failure means no)."""
    if not (os.environ.get("DOCKER_HOST") or os.path.exists("/var/run/docker.sock")):
        return False
    try:
        import docker

        client = docker.from_env(timeout=2)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


@functools.lru_cache(maxsize=1)
def etcd_provider() -> tuple[str, str]:
    """``(kind, description)``; kind is ``docker``, ``binary`` or ``none``."""
    forced = os.environ.get(PROVIDER_ENV, "").strip().lower()
    if forced != "binary" and (forced == "docker" or _docker_reachable()):
        return "docker", f"testcontainers ({ETCD_IMAGE})"
    try:
        from rdzv_etcd.server import find_etcd_binary

        return "binary", f"local binary {find_etcd_binary()}"
    except FileNotFoundError as exc:
        return "none", f"unavailable ({exc})"


def pytest_report_header(config: pytest.Config) -> str:
    return f"etcd: {etcd_provider()[1]}"


class ContainerEtcd:
    """etcd in a Docker container (testcontainers), with :class:`EtcdServer`'s properties."""

    def __init__(self, image: str = ETCD_IMAGE) -> None:
        from testcontainers.core.container import DockerContainer

        self._container = (
            DockerContainer(image)
            .with_exposed_ports(2379)
            .with_command(
                "etcd --name rdzv-test --data-dir /tmp/etcd --enable-v2 --max-request-bytes 33554432 "
                "--listen-client-urls http://0.0.0.0:2379 --advertise-client-urls http://0.0.0.0:2379"
            )
        )
        self.enable_v2 = True

    def start(self) -> ContainerEtcd:
        self._container.start()
        self._wait_healthy()
        return self

    def stop(self) -> None:
        self._container.stop()

    def restart(self, *, kill: bool = False) -> None:
        wrapped = self._container.get_wrapped_container()
        if kill:
            wrapped.kill()
            wrapped.start()
        else:
            wrapped.restart(timeout=10)
        self._wait_healthy()

    @property
    def host(self) -> str:
        return self._container.get_container_host_ip()

    @property
    def port(self) -> int:
        return int(self._container.get_exposed_port(2379))

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.endpoint}"

    def _wait_healthy(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=1.0) as response:  # noqa: S310
                    if json.loads(response.read()).get("health") == "true":
                        return
            except Exception:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"etcd container {ETCD_IMAGE} was not healthy after {timeout} s")


def start_etcd(enable_v2: bool = True) -> Any:
    """Start an etcd the way ``etcd_server`` does (container or binary); the caller stops it."""
    kind, description = etcd_provider()
    if kind == "none":
        pytest.skip(f"etcd is {description}")
    if kind == "docker":
        return ContainerEtcd().start()
    from rdzv_etcd.server import EtcdServer

    return EtcdServer(enable_v2=enable_v2).start()


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
