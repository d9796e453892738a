"""EtcdServer (the throw-away local etcd) and the backends across etcd restarts and crashes."""

from __future__ import annotations

import os
import socket
import threading
import time
import urllib.error
import urllib.request

import pytest

from rdzv_core.api import RendezvousConnectionError
from rdzv_etcd.backend import create_backend
from rdzv_etcd.server import ETCD_BINARY_ENV, EtcdServer
from tests.fixtures_etcd import etcd_params, etcd_provider

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(etcd_provider()[0] != "binaries", reason="tests the local etcd launcher"),
]


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.fixture(scope="module")
def own_server():
    """A server these tests may restart and kill (not the session one)."""
    with EtcdServer(enable_v2=True) as server:
        yield server


def test_lifecycle_and_cleanup():
    server = EtcdServer()
    with server:
        assert server.is_running and _listening(server.port)
        assert server.endpoint == f"127.0.0.1:{server.port}" and server.url == f"http://{server.endpoint}"
        assert os.path.isdir(server.data_dir)
        assert _status(server.url + "/v2/keys/") == 404  # v2 is off unless asked for
        data_dir = server.data_dir
    assert not server.is_running
    assert not _listening(server.port)
    assert not os.path.exists(data_dir)


def test_v2_enabled(own_server):
    assert _status(own_server.url + "/v2/keys/") == 200


def test_missing_binary_says_how_to_provide_one(monkeypatch):
    monkeypatch.setenv(ETCD_BINARY_ENV, "/no/such/etcd")
    with pytest.raises(FileNotFoundError, match=ETCD_BINARY_ENV):
        EtcdServer()


def test_bad_flags_fail_fast_with_the_log():
    server = EtcdServer(extra_args=["--no-such-flag"], startup_timeout=20)
    start = time.monotonic()
    with pytest.raises(RuntimeError, match="no-such-flag"):
        server.start()
    assert time.monotonic() - start < 10
    assert not server.is_running


def test_restart_keeps_ports_and_data(own_server, etcd_api):
    backend, store = create_backend(etcd_params(own_server, etcd_api))
    try:
        _, token, _ = backend.set_state(b"before")
        store.set("k", b"v")
        port = own_server.port
        own_server.restart()
        assert own_server.port == port
        assert backend.get_state() == (b"before", token)  # the pooled connections were stale
        assert store.get("k") == b"v"
        assert backend.set_state(b"after", token)[2] is True
    finally:
        backend.close()


def test_a_watch_survives_a_crash_and_sees_the_change(own_server, etcd_api):
    backend, _ = create_backend(etcd_params(own_server, etcd_api))
    writer, _ = create_backend(etcd_params(own_server, etcd_api, backend.keys.run_id))
    try:
        _, token, _ = backend.set_state(b"v1")
        result = {}
        waiter = threading.Thread(target=lambda: result.update(changed=backend.wait_for_change(token, 30)))
        waiter.start()
        own_server.restart(kill=True)  # SIGKILL: the watch's connection breaks
        writer.set_state(b"v2", token)
        waiter.join(30)
        assert result == {"changed": True}
    finally:
        backend.close()
        writer.close()


def test_unreachable_server_is_a_bounded_connection_error(own_server, etcd_api):
    backend, store = create_backend(etcd_params(own_server, etcd_api))
    try:
        own_server.halt()
        start = time.monotonic()
        with pytest.raises(RendezvousConnectionError, match=own_server.endpoint):
            store.set("k", b"v")
        assert time.monotonic() - start < 10
    finally:
        own_server.restart()
        backend.close()
