"""The test-server providers of :mod:`tests.servers` (#18): the container launchers keep the
local launchers' interface and their faults are Docker's (``docker kill``, ``docker pause``,
``docker start`` of the same container); ``RDZV_TEST_SERVERS`` is validated, and forcing
containers without an engine is a usage error, not a silent fallback.

The container tests run when the session's provider is ``containers``
(``bash scripts/containers.sh`` sets it); the provider-choice tests run everywhere.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests import servers

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
#: Every wait of these tests is bounded by this (seconds).
BOUND = 30

needs_containers = pytest.mark.skipif(
    servers.choose("redis").kind != servers.CONTAINERS or servers.choose("etcd").kind != servers.CONTAINERS,
    reason="the session's servers are not containers (RDZV_TEST_SERVERS=containers, scripts/containers.sh)",
)


def _ping(port: int, timeout: float = 1.0) -> bytes:
    """``PING`` on 127.0.0.1:port in RESP; the reply line, or b"" when none came in time."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            return sock.recv(64)
    except OSError:
        return b""


def _etcd_get(server, key: str):
    """The v2 value of ``key`` on ``server``, or ``None`` when it does not exist."""
    try:
        with urllib.request.urlopen(f"{server.url}/v2/keys/{key}", timeout=5) as response:  # noqa: S310
            return json.loads(response.read())["node"]["value"]
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise


def _etcd_put(server, key: str, value: str) -> None:
    request = urllib.request.Request(f"{server.url}/v2/keys/{key}", data=f"value={value}".encode(), method="PUT")
    request.add_header("Content-Type", "application/x-www-form-urlencoded")
    with urllib.request.urlopen(request, timeout=5):  # noqa: S310
        pass


def _docker_state(server) -> dict:
    container = server._wrapped()
    container.reload()
    return dict(container.attrs["State"])


# -- containers keep the launchers' interface ----------------------------------------------------


@needs_containers
def test_redis_container_runs_on_the_host_network_and_its_faults_are_dockers():
    from tests.containers import LABEL, ContainerRedis

    server = servers.redis_server()
    assert isinstance(server, ContainerRedis)
    try:
        server.start()
        first = server.container_id
        attrs = server._wrapped().attrs
        assert attrs["HostConfig"]["NetworkMode"] == "host"
        assert attrs["Config"]["Labels"].items() >= LABEL.items()
        assert attrs["Config"]["Image"] == servers.image("redis")
        assert _ping(server.port).startswith(b"+PONG") and server.endpoint == f"127.0.0.1:{server.port}"
        assert server.running and server.pid  # the server's pid on this host

        with servers.paused(server):  # docker pause: the port is open, nothing answers
            assert _docker_state(server)["Status"] == "paused"
            assert _ping(server.port, timeout=0.5) == b""
        assert _ping(server.port).startswith(b"+PONG")

        server.kill()  # docker kill
        state = _docker_state(server)
        assert state["Status"] == "exited" and state["ExitCode"] == 137 and not server.running
        assert _ping(server.port, timeout=0.5) == b""
        server.start()  # docker start of the same container, on the same port
        assert server.container_id == first and _ping(server.port).startswith(b"+PONG")

        server.restart()  # SIGTERM, then the same container again
        assert server.container_id == first and _ping(server.port).startswith(b"+PONG")
    finally:
        server.stop()
    client = servers._engine()[0]
    assert not client.containers.list(all=True, filters={"id": first}), "stop() left the container behind"


@needs_containers
def test_etcd_container_restart_keeps_its_data_dir_and_a_wiped_one_is_empty(tmp_path):
    server = servers.etcd_server(enable_v2=True, data_dir=str(tmp_path / "data"))
    try:
        server.start()
        assert server._wrapped().attrs["HostConfig"]["NetworkMode"] == "host"
        _etcd_put(server, "kept", "yes")
        server.kill()  # docker kill: a crash
        assert _docker_state(server)["ExitCode"] == 137
        server.restart()  # the same container, the same data dir
        assert _etcd_get(server, "kept") == "yes"
        assert (tmp_path / "data" / "member").is_dir()  # etcd's data is on the host, ours to wipe
        server.restart(keep_data=False, kill=True)
        assert _etcd_get(server, "kept") is None
        with servers.paused(server):
            with pytest.raises(OSError):
                urllib.request.urlopen(f"{server.url}/health", timeout=0.5)  # noqa: S310
        assert _etcd_get(server, "kept") is None
    finally:
        server.stop()


@needs_containers
def test_a_failed_start_is_the_launchers_error_with_the_output_and_leaves_no_container():
    """A server that exits at once (a bad argument) is the launcher's RuntimeError, with what
    the container printed."""
    server = servers.redis_server(extra_args=["--no-such-option", "x"], startup_timeout=5)
    client = servers._engine()[0]
    before = {c.id for c in client.containers.list(all=True)}
    try:
        with pytest.raises(RuntimeError, match="did not start(.|\n)*FATAL CONFIG FILE ERROR"):
            server.start()
    finally:
        server.stop()
    assert {c.id for c in client.containers.list(all=True)} <= before


@needs_containers
def test_the_header_names_testcontainers_and_the_images():
    header = servers.describe()
    assert header.startswith(f"testcontainers ({servers.image('redis')}, {servers.image('etcd')})")


# -- choosing the provider ------------------------------------------------------------------------


def _collect(**env: str) -> subprocess.CompletedProcess[str]:
    """``pytest --collect-only`` of one small test file in a child with ``env`` added."""
    child_env = {**os.environ, **env}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--collect-only", "-q",
         "tests/unit/test_api.py"],
        cwd=ROOT, env=child_env, capture_output=True, text=True, timeout=BOUND,
    )  # fmt: skip


def test_forcing_containers_without_an_engine_is_a_usage_error(tmp_path):
    start = time.monotonic()
    result = _collect(RDZV_TEST_SERVERS="containers", DOCKER_HOST=f"unix://{tmp_path}/no-engine.sock")
    assert result.returncode == pytest.ExitCode.USAGE_ERROR, result.stdout + result.stderr
    assert "RDZV_TEST_SERVERS=containers, but no Docker engine answers at unix://" in result.stderr
    assert time.monotonic() - start < BOUND


def test_an_unknown_provider_is_a_usage_error():
    result = _collect(RDZV_TEST_SERVERS="vms")
    assert result.returncode == pytest.ExitCode.USAGE_ERROR
    assert "RDZV_TEST_SERVERS='vms'" in result.stderr


@pytest.mark.skipif(
    servers._binary("redis").kind != servers.BINARIES or servers._binary("etcd").kind != servers.BINARIES,
    reason="needs the redis-server and etcd binaries",
)
def test_forcing_binaries_reports_the_binaries():
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--collect-only", "tests/unit/test_api.py"],
        cwd=ROOT, env={**os.environ, "RDZV_TEST_SERVERS": "binaries"}, capture_output=True, text=True, timeout=BOUND,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "test servers: local binaries (" in result.stdout and "[RDZV_TEST_SERVERS=binaries]" in result.stdout


@needs_containers
def test_a_missing_image_is_named():
    client = servers._engine()[0]
    why = servers._image_present(client, "rdzv-local/no-such-image:0", pull=False)
    assert why == "image rdzv-local/no-such-image:0 is not present (docker pull rdzv-local/no-such-image:0)"
    assert servers._image_present(client, servers.image("redis"), pull=False) == ""
