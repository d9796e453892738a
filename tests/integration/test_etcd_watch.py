"""Watches that end without an event, on a real etcd (v2 and v3): a server wiped and restarted
empty, a compacted history (v3) or cleared event index (v2), a watch from a revision the server
never had, and (through a small proxy in front of etcd) a gateway that closes every watch
stream at once or answers it with an error.

Every watch request is counted (a wrapper on the adapter's client, or the proxy): a watch that
keeps ending must back off, not re-open in a tight loop. Every wait is bounded.
"""

from __future__ import annotations

import base64
import contextlib
import http.server
import json
import shutil
import socketserver
import threading
import time
import urllib.error
import urllib.request
from typing import Any

import pytest

from rdzv_core.api import RendezvousConnectionError, RendezvousParameters
from rdzv_etcd.backend import create_backend
from tests.fixtures_etcd import private_etcd, unique_run_id

pytestmark = pytest.mark.integration

#: Watch requests a waiter may make in the few seconds of one test (a tight loop makes thousands).
MAX_WATCH_REQUESTS = 20


@pytest.fixture(scope="module")
def own_etcd():
    """A private etcd (v2 enabled) that these tests may wipe."""
    with private_etcd("watch", enable_v2=True) as server:
        yield server


@pytest.fixture
def make_backend():
    made = []

    def make(endpoint: str, api: str, run_id: str | None = None):
        backend, _ = create_backend(
            RendezvousParameters(f"etcd-{api}", endpoint, run_id or unique_run_id("watch"), 1, 2, read_timeout=5)
        )
        made.append(backend)
        return backend

    yield make
    for backend in made:
        backend.close()


class WatchCounter:
    """Counts the watch requests of one adapter (v3: ``POST /v3/watch``, with the start
    revision of each; v2: reads with ``wait=True``); ``reached(n)`` is set at the n-th."""

    def __init__(self, backend: Any) -> None:
        kv = backend.kv
        _, client = kv._client()  # the one endpoint's client (kept across failures)
        self.starts: list[int] = []
        self._events: dict[int, threading.Event] = {}
        self._lock = threading.Lock()
        if kv.api == "v3":
            session = client.session
            post = session.post

            def counted_post(url: str, *args: Any, **kwargs: Any) -> Any:
                if url.endswith("/watch"):
                    self._count(int(kwargs["json"]["create_request"]["start_revision"]))
                return post(url, *args, **kwargs)

            session.post = counted_post
        else:
            read = client.read

            def counted_read(key: str, **kwargs: Any) -> Any:
                if kwargs.get("wait"):
                    self._count(int(kwargs["waitIndex"]))
                return read(key, **kwargs)

            client.read = counted_read

    def _count(self, start: int) -> None:
        with self._lock:
            self.starts.append(start)
            event = self._events.get(len(self.starts))
        if event is not None:
            event.set()

    @property
    def count(self) -> int:
        with self._lock:
            return len(self.starts)

    def reached(self, n: int) -> threading.Event:
        with self._lock:
            event = self._events.setdefault(n, threading.Event())
            if len(self.starts) >= n:
                event.set()
        return event


def in_thread(fn):
    """Run ``fn`` in a thread; return (thread, result dict with ``value``/``error`` and ``seconds``)."""
    result: dict[str, Any] = {}

    def run() -> None:
        start = time.monotonic()
        try:
            result["value"] = fn()
        except Exception as exc:
            result["error"] = exc
        result["seconds"] = time.monotonic() - start

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, result


def current_revision(server: Any) -> int:
    import etcd3gw

    client = etcd3gw.client(host=server.host, port=server.port, timeout=10)
    return int(
        client.post(client.get_url("/kv/range"), json={"key": base64.b64encode(b"\0").decode()})["header"]["revision"]
    )


def compact(server: Any) -> int:
    """Compact etcd's history up to its current revision (``POST /v3/kv/compaction``)."""
    import etcd3gw

    client = etcd3gw.client(host=server.host, port=server.port, timeout=10)
    revision = current_revision(server)
    client.post(client.get_url("/kv/compaction"), json={"revision": str(revision), "physical": True})
    return revision


# -- the server loses its data ------------------------------------------------------------


def test_waiter_sees_a_wiped_and_restarted_server_as_a_change(own_etcd, make_backend, etcd_api):
    backend = make_backend(own_etcd.endpoint, etcd_api)
    token = None
    for i in range(30):  # the state's version is now well above what the empty server will have
        _, token, _ = backend.set_state(b"state %d" % i, token)
    counter = WatchCounter(backend)
    thread, result = in_thread(lambda: backend.wait_for_change(token, 5))
    assert counter.reached(1).wait(5), "the waiter never watched"

    own_etcd.halt()
    shutil.rmtree(own_etcd.data_dir)
    own_etcd.restart()  # same port, no data

    thread.join(10)
    assert not thread.is_alive()
    print(
        f"\n[measured] etcd-{etcd_api} wiped: wait_for_change -> {result.get('value', result.get('error'))!r} after {result['seconds']:.2f} s, {counter.count} watch request(s)"
    )
    assert result.get("value") is True, result
    assert result["seconds"] < 5.0
    assert counter.count <= MAX_WATCH_REQUESTS
    assert backend.get_state() is None  # the caller re-reads: the state is gone


def test_v3_watch_from_a_revision_the_server_never_had_is_a_change_and_backs_off(own_etcd, make_backend):
    """The ``created`` header shows the server's revision: a watch from beyond it + 1 (data
    lost) answers True at once; a caller that insists is slowed down by the back-off."""
    backend = make_backend(own_etcd.endpoint, "v3")
    _, token, _ = backend.set_state(b"state")
    impossible = current_revision(own_etcd) + 1000
    counter = WatchCounter(backend)
    start = time.monotonic()
    assert backend.wait_for_change(impossible, 5) is True
    assert time.monotonic() - start < 1.0
    assert counter.starts == [impossible + 1]  # once, never again from there

    start = time.monotonic()
    while (left := 3.0 - (time.monotonic() - start)) > 0:
        backend.wait_for_change(impossible, left)
    print(f"\n[measured] etcd-v3 impossible revision, caller loop 3 s: {counter.count} watch request(s)")
    assert counter.count <= MAX_WATCH_REQUESTS
    assert backend.wait_for_change(token, 0) is False  # the real state is untouched


# -- lost history: v3 compaction, v2 cleared event index ----------------------------------


def _age_the_history(server: Any, api: str, backend: Any) -> None:
    """Make the state key's version older than the history etcd keeps."""
    if api == "v3":
        for i in range(5):  # separate revisions after the state's
            backend.kv.put(f"{backend.keys.run_prefix}other/{i}", b"x")
        compact(server)
    else:
        import etcd

        client = etcd.Client(host=server.host, port=server.port, read_timeout=10)
        for i in range(1010):  # etcd v2 keeps the last 1000 events
            client.write(f"{backend.keys.run_prefix}other/{i % 10}", "x")


def test_watch_after_lost_history_resumes_and_sees_a_later_change(own_etcd, make_backend, etcd_api):
    backend = make_backend(own_etcd.endpoint, etcd_api)
    other = make_backend(own_etcd.endpoint, etcd_api, backend.keys.run_id)
    _, token, _ = backend.set_state(b"v1")
    _age_the_history(own_etcd, etcd_api, backend)
    counter = WatchCounter(backend)
    thread, result = in_thread(lambda: backend.wait_for_change(token, 10))
    # the first watch (from token + 1) is compacted/cleared; the second resumes from a fresh read
    assert counter.reached(2).wait(5), f"the watch did not resume ({counter.starts}, {result})"
    assert counter.starts[0] == token + 1 and counter.starts[1] > token + 1
    assert thread.is_alive(), f"a lost history was reported as a change: {result}"

    other.set_state(b"v2", token)
    thread.join(10)
    assert result.get("value") is True, result
    print(f"\n[measured] etcd-{etcd_api} lost history: {counter.count} watch request(s), starts {counter.starts}")
    assert counter.count <= 3


def test_caller_loop_after_lost_history_does_not_spin(own_etcd, make_backend, etcd_api):
    """An executor-like caller (read the state, wait for a change) on a key older than the
    history: it used to get True at once forever (thousands of watches a second on v2)."""
    backend = make_backend(own_etcd.endpoint, etcd_api)
    _, token, _ = backend.set_state(b"v1")
    _age_the_history(own_etcd, etcd_api, backend)
    counter = WatchCounter(backend)
    changes = 0
    start = time.monotonic()
    while (left := 3.0 - (time.monotonic() - start)) > 0:
        current = backend.get_state()
        assert current == (b"v1", token)
        changes += backend.wait_for_change(current[1], left)
    print(
        f"\n[measured] etcd-{etcd_api} lost history, caller loop 3 s: {counter.count} watch request(s), {changes} change(s) reported"
    )
    assert changes == 0
    assert counter.count <= MAX_WATCH_REQUESTS


# -- a gateway that ends every watch at once (through a proxy) ----------------------------


class _Proxy(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


@contextlib.contextmanager
def proxy_to(upstream: str, watch_answer: bytes):
    """An HTTP proxy to etcd at ``upstream`` that answers every ``POST /v3/watch`` with 200 and
    ``watch_answer`` (then closes); counts them in ``proxy.watches``; shut down at the end."""

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if self.path == "/v3/watch":
                with lock:
                    server.watches += 1
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(watch_answer)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(watch_answer)
                self.close_connection = True
                return
            request = urllib.request.Request(
                upstream + self.path, data=body, method="POST", headers={"Content-Type": "application/json"}
            )
            try:
                with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - our own etcd
                    status, data = response.status, response.read()
            except urllib.error.HTTPError as exc:
                status, data = exc.code, exc.read()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    lock = threading.Lock()
    server = _Proxy(("127.0.0.1", 0), Handler)
    server.watches = 0
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def _error(grpc_code: int, http_code: int, message: str) -> bytes:
    return json.dumps({"error": {"grpc_code": grpc_code, "http_code": http_code, "message": message}}).encode() + b"\n"


UNAVAILABLE = _error(14, 503, "etcdserver: no leader")
CLOSING = _error(1, 408, "grpc: the client connection is closing")  # etcd shutting down
DENIED = _error(7, 403, "etcdserver: permission denied")


@pytest.mark.parametrize("answer", [b"", UNAVAILABLE, CLOSING], ids=["closed-at-once", "unavailable", "closing"])
def test_v3_watch_stream_that_ends_at_once_backs_off(own_etcd, make_backend, answer):
    with proxy_to(own_etcd.url, answer) as proxy:
        backend = make_backend(f"127.0.0.1:{proxy.server_address[1]}", "v3")
        _, token, _ = backend.set_state(b"state")
        start = time.monotonic()
        with pytest.raises(RendezvousConnectionError, match="watch"):
            backend.wait_for_change(token, 3)
        seconds = time.monotonic() - start
        print(
            f"\n[measured] etcd-v3 watch answered {answer[:20]!r}: gave up after {seconds:.2f} s, {proxy.watches} watch request(s)"
        )
        assert seconds < 3.0 + 1.5
        assert 2 <= proxy.watches <= MAX_WATCH_REQUESTS


def test_v3_watch_refused_by_the_server_fails_at_once(own_etcd, make_backend):
    with proxy_to(own_etcd.url, DENIED) as proxy:
        backend = make_backend(f"127.0.0.1:{proxy.server_address[1]}", "v3")
        _, token, _ = backend.set_state(b"state")
        start = time.monotonic()
        with pytest.raises(RendezvousConnectionError, match="permission denied"):
            backend.wait_for_change(token, 3)
        assert time.monotonic() - start < 1.0
        assert proxy.watches == 1
