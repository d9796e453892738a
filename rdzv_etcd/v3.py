"""The etcd v3 API adapter (etcd3gw, over the gRPC JSON gateway) and the ``etcd-v3`` factory.

Everything goes through etcd's JSON gateway (``POST /v3/kv/range``, ``/v3/kv/txn``,
``/v3/lease/grant``, ``/v3/watch``, ...), the transport etcd3gw speaks: keys and values are
base64 in JSON, 64-bit integers are JSON strings.

* **Versions** are ``mod_revision`` values, revisions the response header's ``revision``.
* **Compare-and-set** is one transaction: ``compare mod_revision == version`` (or
  ``create_revision == 0`` to create), ``success: put``, ``failure: range`` so the current
  value comes back in the same round trip.
* **TTLs** are leases. One lease per TTL value is shared by the keys this client writes with
  that TTL: it is granted for ``2 * ttl`` and used for ``ttl`` seconds, so a key outlives its
  last write by ``ttl`` to ``2 * ttl`` seconds and a write costs one request (plus one grant
  per ``ttl`` seconds), not a grant and a keep-alive each.
* **Watches** are read here from etcd3gw's HTTP session rather than with ``etcd3gw.watch``:
  that helper splits JSON at HTTP chunk boundaries (large values break it), ignores a
  cancelled/compacted watch (it would hang), and has no deadline. :meth:`EtcdV3KV.watch`
  reads the newline-delimited stream with the socket's read timeout set to the time left,
  answers on the first event, and closes the stream (which cancels the watch server-side).
  A watch that ends without an event (cancelled, compacted, closed at once, etcd
  unavailable) is retried after a jittered back-off and a re-read of the key, from the read's
  revision + 1; a server whose revision is below the watched one lost its data, which is
  answered as a change (see :meth:`rdzv_etcd.client.EtcdKV.watch`).
* **Authentication**: with ``username``/``password`` a token from ``/v3/auth/authenticate``
  is sent as the ``Authorization`` header and renewed when etcd reports it invalid.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing
from typing import TYPE_CHECKING, Any

from rdzv_core.api import RendezvousParameters, RendezvousStateError
from rdzv_etcd.client import EtcdConfig, EtcdKV, Failure, Versioned, WatchCursor, WatchOutcome, import_client

if TYPE_CHECKING:
    from rdzv_etcd.backend import EtcdRendezvousBackend
    from rdzv_etcd.store import EtcdStore

__all__ = ["EtcdV3KV", "create_backend"]

logger = logging.getLogger(__name__)

#: etcd's default ``--max-txn-ops``: multi-key reads and writes are batched by this.
MAX_TXN_OPS = 128
#: API prefix of the gateway (etcd >= 3.4).
API_PATH = "/v3/"


def _b64(data: str | bytes) -> str:
    return base64.b64encode(data.encode("utf-8") if isinstance(data, str) else data).decode("ascii")


def _unb64(text: str, key: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise RendezvousStateError(f"etcd returned a malformed value for key '{key}'.") from None


def _prefix_end(prefix: str) -> str:
    """The ``range_end`` that selects every key starting with ``prefix`` (ASCII)."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class _WatchEnded(Exception):
    """The watch stream closed without an event (server restart, proxy timeout) or reported a
    server-side failure: retried (after a back-off, re-reading the key first)."""


class _LeaseCache:
    """One lease per TTL (seconds, int): granted for ``2 * ttl``, handed out for ``ttl``."""

    def __init__(self) -> None:
        self._leases: dict[int, tuple[int, float]] = {}
        self._lock = threading.Lock()

    def lease(self, ttl: int, grant: Callable[[int], int]) -> int:
        """Return a lease that lives at least ``ttl`` more seconds; ``grant(seconds)`` makes one."""
        now = time.monotonic()
        with self._lock:
            entry = self._leases.get(ttl)
            if entry is not None and entry[1] > now:
                return entry[0]
        lease_id = grant(2 * ttl)
        with self._lock:
            self._leases[ttl] = (lease_id, now + ttl)
        return lease_id

    def forget(self, lease_id: int) -> None:
        """Drop ``lease_id`` (etcd no longer knows it)."""
        with self._lock:
            self._leases = {ttl: entry for ttl, entry in self._leases.items() if entry[0] != lease_id}


class EtcdV3KV(EtcdKV):
    """:class:`~rdzv_etcd.client.EtcdKV` on the etcd v3 API through the JSON gateway (etcd3gw).

    Needs etcd >= 3.4 (gateway at ``/v3/``). Values are stored as raw bytes. With several
    endpoints, requests fail over between them.

    Raises:
        ImportError: etcd3gw is not installed (``pip install 'rdzv[etcd]'``).
    """

    api = "v3"

    def __init__(self, config: EtcdConfig) -> None:
        super().__init__(config)
        self._etcd3gw = import_client("etcd3gw")
        self._exceptions = import_client("etcd3gw.exceptions")
        self._requests = import_client("requests")
        self._urllib3 = import_client("urllib3")
        self._leases = _LeaseCache()
        self._auth_lock = threading.Lock()
        self._cluster_lock = threading.Lock()
        self._cluster_id: str | None = None
        self._cluster_epoch = 0

    # -- EtcdKV ---------------------------------------------------------------------------

    def get(self, key: str) -> Versioned | None:
        return self.get_many([key])[0].get(key)

    def get_many(self, keys: Sequence[str]) -> tuple[dict[str, Versioned], int]:
        """One ``range`` for one key; transactions of up to 128 ``range`` ops for more."""

        def op(client: Any) -> tuple[dict[str, Versioned], int]:
            if len(keys) == 1:
                response = self._post(client, "kv/range", {"key": _b64(keys[0])})
                return self._kvs(response), int(response["header"]["revision"])
            values: dict[str, Versioned] = {}
            revision = None
            for batch in _chunks(list(keys), MAX_TXN_OPS):
                txn = {"success": [{"request_range": {"key": _b64(key)}} for key in batch]}
                response = self._post(client, "kv/txn", txn)
                revision = revision or int(response["header"]["revision"])
                for item in response.get("responses", []):
                    values.update(self._kvs(item.get("response_range", {})))
            if revision is None:
                revision = int(
                    self._post(client, "kv/range", {"key": _b64("\0"), "count_only": True})["header"]["revision"]
                )
            return values, revision

        return self._call("get", op)

    def put(self, key: str, value: bytes, ttl: float | None = None) -> int:
        request = {"key": _b64(key), "value": _b64(value)}

        def op(client: Any) -> int:
            response = self._with_lease(client, ttl, lambda lease: self._post(client, "kv/put", {**request, **lease}))
            return int(response["header"]["revision"])

        return self._call("put", op)

    def put_many(self, items: Sequence[tuple[str, bytes]]) -> None:
        """One transaction per 128 keys (atomic when there are at most 128)."""

        def op(client: Any) -> None:
            for batch in _chunks(list(items), MAX_TXN_OPS):
                puts = [{"request_put": {"key": _b64(key), "value": _b64(value)}} for key, value in batch]
                self._post(client, "kv/txn", {"success": puts})

        self._call("put", op)

    def put_if(
        self, key: str, value: bytes, version: int | None, ttl: float | None = None
    ) -> tuple[bool, Versioned | None]:
        encoded = _b64(key)
        if version is None:
            compare = {"key": encoded, "target": "CREATE", "result": "EQUAL", "create_revision": "0"}
        else:
            compare = {"key": encoded, "target": "MOD", "result": "EQUAL", "mod_revision": str(version)}

        def txn(lease: dict[str, str]) -> dict[str, Any]:
            return {
                "compare": [compare],
                "success": [{"request_put": {"key": encoded, "value": _b64(value), **lease}}],
                "failure": [{"request_range": {"key": encoded}}],
            }

        def op(client: Any) -> tuple[bool, Versioned | None]:
            response = self._with_lease(client, ttl, lambda lease: self._post(client, "kv/txn", txn(lease)))
            if response.get("succeeded"):
                return True, Versioned(value, int(response["header"]["revision"]))
            current = self._kvs(response["responses"][0].get("response_range", {}))
            return False, current.get(key)

        return self._call("compare-and-set", op, idempotent=False)

    def delete(self, key: str) -> bool:
        def op(client: Any) -> bool:
            return int(self._post(client, "kv/deleterange", {"key": _b64(key)}).get("deleted", 0)) > 0

        return self._call("delete", op)

    def delete_many(self, keys: Sequence[str]) -> None:
        def op(client: Any) -> None:
            for batch in _chunks(list(keys), MAX_TXN_OPS):
                self._post(
                    client, "kv/txn", {"success": [{"request_delete_range": {"key": _b64(key)}} for key in batch]}
                )

        self._call("delete", op)

    def list_prefix(self, prefix: str) -> dict[str, Versioned]:
        def op(client: Any) -> dict[str, Versioned]:
            return self._kvs(
                self._post(client, "kv/range", {"key": _b64(prefix), "range_end": _b64(_prefix_end(prefix))})
            )

        return self._call("list", op)

    def delete_prefix(self, prefix: str) -> int:
        """One ``deleterange`` over ``[prefix, prefix_end)``."""

        def op(client: Any) -> int:
            request = {"key": _b64(prefix), "range_end": _b64(_prefix_end(prefix))}
            return int(self._post(client, "kv/deleterange", request).get("deleted", 0))

        return self._call("delete", op)

    def child_names(self, prefix: str) -> list[str]:
        """One ``keys_only`` range over ``prefix``."""

        def op(client: Any) -> list[str]:
            request = {"key": _b64(prefix), "range_end": _b64(_prefix_end(prefix)), "keys_only": True}
            keys = [_unb64(kv["key"], prefix).decode() for kv in self._post(client, "kv/range", request).get("kvs", [])]
            return sorted({key[len(prefix) :].split("/", 1)[0] for key in keys if len(key) > len(prefix)})

        return self._call("list", op)

    def count_prefix(self, prefix: str, max_version: int | None = None) -> int:
        """``range`` with ``count_only``, counted by etcd; with ``max_version``, a
        ``keys_only`` range filtered by ``max_mod_revision`` (etcd's count ignores filters)."""

        def op(client: Any) -> int:
            request: dict[str, Any] = {"key": _b64(prefix), "range_end": _b64(_prefix_end(prefix))}
            if max_version is None:
                return int(self._post(client, "kv/range", {**request, "count_only": True}).get("count", 0))
            request.update(keys_only=True, max_mod_revision=str(max_version))
            return len(self._post(client, "kv/range", request).get("kvs", []))

        return self._call("count", op)

    def watch(self, key: str, start_revision: int, timeout: float) -> bool:
        """Stream ``POST /v3/watch`` from ``start_revision``; ``True`` on the first event (or
        a lost history / lost data, see :meth:`EtcdKV.watch`), ``False`` after ``timeout``
        seconds.

        The ``created`` answer's header tells the server's revision: below
        ``start_revision - 1`` means the server lost its data (wiped and restarted: a watch
        from a future revision would wait for changes that were already made). A cancelled
        or compacted watch re-reads the key and resumes from the read's revision + 1."""
        epoch = self._cluster_epoch
        return self._watch_loop(
            key,
            start_revision,
            timeout,
            lambda client, cursor, deadline: self._watch_attempt(client, key, cursor, deadline, epoch),
        )

    def _watch_attempt(self, client: Any, key: str, cursor: WatchCursor, deadline: float, epoch: int) -> WatchOutcome:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return WatchOutcome.TIMEOUT
        if cursor.recheck:
            response = self._post(client, "kv/range", {"key": _b64(key)})
            if self._cluster_epoch != epoch:
                return WatchOutcome.LOST
            current = self._kvs(response).get(key)
            revision = int(response["header"]["revision"])
            if current is None or current.version >= cursor.start:
                return WatchOutcome.CHANGED
            if revision < cursor.start - 1:
                return WatchOutcome.LOST
            cursor.start, cursor.recheck = revision + 1, False
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return WatchOutcome.TIMEOUT
        cursor.recheck = True  # whatever ends this attempt without an event: re-read first
        self._ensure_token(client)
        request = {"create_request": {"key": _b64(key), "start_revision": str(cursor.start)}}
        outcome = self._watch_stream(client, request, remaining, cursor.start, epoch)
        if outcome in (WatchOutcome.EVENT, WatchOutcome.TIMEOUT):
            cursor.recheck = False
        return outcome

    # -- requests -------------------------------------------------------------------------

    def _post(
        self, client: Any, path: str, payload: dict[str, Any], *, reauthenticated: bool = False
    ) -> dict[str, Any]:
        """POST ``payload`` to the gateway and return the decoded JSON answer.

        Renews the auth token once when etcd reports it invalid (tokens expire)."""
        self._ensure_token(client)
        try:
            response = dict(client.post(client.get_url(path), json=payload, **self._tls_kwargs()))
        except self._exceptions.Etcd3Exception as exc:
            if self.config.username and not reauthenticated and _is_invalid_token(exc):
                self._authenticate(client)
                return self._post(client, path, payload, reauthenticated=True)
            raise
        self._note_cluster(response.get("header") or {})
        return response

    def _watch_stream(
        self, client: Any, request: dict[str, Any], remaining: float, start: int, epoch: int
    ) -> WatchOutcome:
        """One watch stream: EVENT, TIMEOUT, LOST (the ``created`` header shows a revision
        below ``start - 1`` or another cluster), RESUME (cancelled/compacted). Raises
        :class:`_WatchEnded` (retried) when the stream closes without an event or reports a
        server-side failure (5xx, etcd unavailable)."""
        requests = self._requests
        try:
            response = client.session.post(
                client.get_url("watch"),
                json=request,
                stream=True,
                timeout=(self.config.connect_timeout, remaining),
                **self._tls_kwargs(),
            )
        except requests.exceptions.ReadTimeout:
            return WatchOutcome.TIMEOUT
        with closing(response):
            if response.status_code != 200 and _is_passing(response.status_code, response.text):
                raise _WatchEnded(f"the watch failed with HTTP {response.status_code}: {response.text[:200]}")
            if response.status_code != 200:
                raise self._exceptions.Etcd3Exception(response.text, response.reason)
            try:
                for message in _json_lines(response):
                    if "error" in message:
                        error = message["error"]
                        if isinstance(error, dict) and _is_passing(0, error):
                            raise _WatchEnded(f"the watch failed: {json.dumps(error)[:200]}")
                        raise self._exceptions.Etcd3Exception(json.dumps(error), "watch failed")
                    result = message.get("result", {})
                    header = result.get("header", {})
                    self._note_cluster(header)
                    if result.get("events"):
                        return WatchOutcome.EVENT
                    if result.get("canceled"):
                        logger.debug(
                            "The etcd watch from revision %d was cancelled (compact_revision=%s, reason=%r).",
                            start,
                            result.get("compact_revision"),
                            result.get("cancel_reason"),
                        )
                        return WatchOutcome.RESUME
                    if self._cluster_epoch != epoch:
                        return WatchOutcome.LOST
                    if result.get("created") and "revision" in header and int(header["revision"]) < start - 1:
                        return WatchOutcome.LOST
            except requests.exceptions.RequestException as exc:
                if _is_read_timeout(exc, requests, self._urllib3):
                    return WatchOutcome.TIMEOUT
                raise
        raise _WatchEnded("the watch stream ended without an event")

    def _note_cluster(self, header: dict[str, Any]) -> None:
        """Remember the cluster id of an answer; a different one than before (the endpoints
        now reach another cluster, e.g. one rebuilt from scratch) starts a new epoch, which
        running watches report as lost data. Member ids are not compared: several members
        behind one address (a load balancer) are one cluster."""
        cluster = header.get("cluster_id")
        if not cluster:
            return
        with self._cluster_lock:
            if cluster != self._cluster_id:
                if self._cluster_id is not None:
                    logger.warning(
                        "etcd at %s now answers as cluster %s (was %s).", self.endpoint, cluster, self._cluster_id
                    )
                    self._cluster_epoch += 1
                self._cluster_id = cluster

    def _with_lease(
        self, client: Any, ttl: float | None, send: Callable[[dict[str, str]], dict[str, Any]]
    ) -> dict[str, Any]:
        """Run ``send(lease_fields)`` with a lease of ``ttl`` seconds (none if ``None``);
        when etcd lost the cached lease, grant a new one and send again."""
        if ttl is None:
            return send({})
        seconds = max(1, math.ceil(ttl))
        lease_id = self._leases.lease(seconds, lambda duration: self._grant(client, duration))
        try:
            return send({"lease": str(lease_id)})
        except self._exceptions.Etcd3Exception as exc:
            if "lease not found" not in (exc.detail_text or ""):
                raise
            self._leases.forget(lease_id)
            lease_id = self._leases.lease(seconds, lambda duration: self._grant(client, duration))
            return send({"lease": str(lease_id)})

    def _grant(self, client: Any, seconds: int) -> int:
        return int(self._post(client, "lease/grant", {"TTL": str(seconds), "ID": "0"})["ID"])

    def _ensure_token(self, client: Any) -> None:
        if self.config.username and "Authorization" not in client.session.headers:
            self._authenticate(client)

    def _authenticate(self, client: Any) -> None:
        """Get a token from ``/v3/auth/authenticate`` and send it with every request."""
        with self._auth_lock:
            client.session.headers.pop("Authorization", None)
            credentials = {"name": self.config.username, "password": self.config.password}
            token = client.post(client.get_url("auth/authenticate"), json=credentials, **self._tls_kwargs())["token"]
            client.session.headers["Authorization"] = token

    def _tls_kwargs(self) -> dict[str, Any]:
        """``verify=<cacert>`` for every request: requests lets ``REQUESTS_CA_BUNDLE`` /
        ``CURL_CA_BUNDLE`` override a session's ``verify``, but not a request's."""
        return {"verify": self.config.cacert} if self.config.cacert else {}

    def _kvs(self, response: dict[str, Any]) -> dict[str, Versioned]:
        values: dict[str, Versioned] = {}
        for item in response.get("kvs", []):
            key = _unb64(item["key"], "?").decode("utf-8", "replace")
            values[key] = Versioned(_unb64(item.get("value", ""), key), int(item["mod_revision"]))
        return values

    # -- adapter plumbing -----------------------------------------------------------------

    def _connect(self, endpoint: Any, url: str) -> Any:
        session = self._requests.Session()
        # No proxies, netrc or CA bundle from the environment: requests would look them up
        # (os.environ, ~/.netrc stats) on every request, ~15 % of a node's CPU at scale, and
        # etcd traffic should not silently follow an HTTP(S)_PROXY meant for the web.
        session.trust_env = False
        if self.config.cacert:
            session.verify = self.config.cacert
        if self.config.cert:
            session.cert = (self.config.cert, self.config.key) if self.config.key else self.config.cert
        return self._etcd3gw.Etcd3Client(
            host=endpoint.host,
            port=endpoint.port,
            protocol=self.config.protocol,
            timeout=(self.config.connect_timeout, self.config.read_timeout),  # type: ignore[arg-type]
            api_path=API_PATH,
            session=session,
        )

    def _disconnect(self, client: Any) -> None:
        client.session.close()

    def _classify(self, exc: BaseException) -> Failure | None:
        exceptions, requests = self._exceptions, self._requests
        if isinstance(exc, _WatchEnded):
            return Failure.MAYBE_SENT
        if isinstance(exc, (exceptions.ConnectionFailedError, exceptions.ConnectionTimeoutError)):
            return _failure_of_transport(exc.__context__, requests, self._urllib3)
        if isinstance(exc, exceptions.InternalServerError):
            return Failure.MAYBE_SENT
        if isinstance(exc, requests.exceptions.RequestException):
            return _failure_of_transport(exc, requests, self._urllib3)
        if isinstance(exc, exceptions.Etcd3Exception):
            return Failure.REFUSED
        return None

    def _describe(self, exc: BaseException) -> str:
        detail = getattr(exc, "detail_text", None)
        if detail:
            try:
                body = json.loads(detail)
                detail = body.get("message") or body.get("error") or detail
            except (ValueError, AttributeError):
                pass
            return f"{type(exc).__name__}: {detail}"
        return f"{type(exc).__name__}: {exc}"


def _json_lines(response: Any) -> Iterator[dict[str, Any]]:
    """Yield the newline-delimited JSON messages of a gateway stream, however it is chunked."""
    buffer = bytearray()
    for chunk in response.iter_content(chunk_size=None):
        buffer.extend(chunk)
        while True:
            end = buffer.find(b"\n")
            if end < 0:
                break
            line = bytes(buffer[:end])
            del buffer[: end + 1]
            if line.strip():
                yield json.loads(line)


def _is_read_timeout(exc: BaseException, requests: Any, urllib3: Any) -> bool:
    if isinstance(exc, requests.exceptions.ReadTimeout):
        return True
    return any(isinstance(arg, urllib3.exceptions.ReadTimeoutError) for arg in getattr(exc, "args", ()))


def _failure_of_transport(exc: BaseException | None, requests: Any, urllib3: Any) -> Failure:
    """Connect failures (refused, connect timeout) are NOT_SENT; TLS failures REFUSED (a
    certificate does not get better by retrying); the rest MAYBE_SENT."""
    if isinstance(exc, requests.exceptions.SSLError):
        return Failure.REFUSED
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return Failure.NOT_SENT
    not_sent = (urllib3.exceptions.NewConnectionError, urllib3.exceptions.ConnectTimeoutError)
    for arg in getattr(exc, "args", ()):
        if isinstance(arg, not_sent) or isinstance(getattr(arg, "reason", None), not_sent):
            return Failure.NOT_SENT
    return Failure.MAYBE_SENT


#: gRPC codes of a watch that the server ended but may serve again: CANCELLED (the gateway's
#: connection is closing: etcd shuts down), DEADLINE_EXCEEDED, ABORTED, UNAVAILABLE (no
#: leader yet, transport closing). Others (permission, authentication, bad request) refuse.
_PASSING_GRPC_CODES = frozenset({1, 4, 10, 14})


def _is_passing(status: int, error: Any) -> bool:
    """Whether a watch answer (HTTP ``status``; an ``error`` message, or a body holding one)
    is a passing server failure worth retrying rather than a refusal."""
    if status >= 500 or status == 408:
        return True
    if isinstance(error, str):
        try:
            error = json.loads(error)
        except ValueError:
            return False
        error = error.get("error", error) if isinstance(error, dict) else error
    if not isinstance(error, dict):
        return False
    try:
        code = int(error.get("grpc_code", error.get("code", 0)) or 0)
        return code in _PASSING_GRPC_CODES or int(error.get("http_code", 0) or 0) >= 500
    except (TypeError, ValueError):
        return False


def _is_invalid_token(exc: Any) -> bool:
    text = exc.detail_text or ""
    return "invalid auth token" in text or "auth token is invalid" in text or '"code":16' in text.replace(" ", "")


def create_backend(params: RendezvousParameters) -> tuple[EtcdRendezvousBackend, EtcdStore]:
    """Create the ``etcd-v3`` backend and the run's store (see
    :func:`rdzv_etcd.backend.create_backend`)."""
    from rdzv_etcd.backend import create_backend as create

    return create(params, api="v3")
