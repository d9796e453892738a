"""Connection configuration, error mapping, retry/failover and the key-value interface that the
etcd v2 and v3 adapters share.

The backend (:mod:`rdzv_etcd.backend`) and the store (:mod:`rdzv_etcd.store`) are written
once, against :class:`EtcdKV`: a small versioned key-value interface (read with a version,
compare-and-set on that version, TTLs, watch from a revision). :mod:`rdzv_etcd.v2`
implements it on python-etcd (the v2 HTTP API), :mod:`rdzv_etcd.v3` on etcd3gw (the v3 gRPC
JSON gateway). This module holds what both need: :class:`EtcdConfig` (endpoints, TLS, auth,
timeouts, parsed from :class:`~rdzv_core.api.RendezvousParameters`), the lazy import of the
client libraries, and :meth:`EtcdKV._call`, which retries transport failures briefly, fails
over between endpoints, and turns what is left into
:class:`~rdzv_core.api.RendezvousConnectionError` naming the endpoint and the cause (never the
password).
"""

from __future__ import annotations

import enum
import importlib
import logging
import os
import random
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, ClassVar, NamedTuple, TypeVar

from rdzv_core.api import RendezvousConnectionError, RendezvousParameters
from rdzv_core.retry import BACKOFF, Failure, call_with_retry
from rdzv_core.utils import Endpoint, parse_rendezvous_endpoint, read_secret_file, scrub

__all__ = [
    "DEFAULT_PORT",
    "DEFAULT_READ_TIMEOUT",
    "DEFAULT_KEY_TTL",
    "ETCD_CONFIG_KEYS",
    "EtcdConfig",
    "EtcdKV",
    "OutcomeUnknownError",
    "Versioned",
    "WatchBackoff",
    "Failure",
    "WatchCursor",
    "WatchOutcome",
    "import_client",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: etcd's client port.
DEFAULT_PORT = 2379
#: Seconds a single request (not a watch) may take.
DEFAULT_READ_TIMEOUT = 60.0
#: Seconds the rendezvous state outlives its last write (torch's default: two hours).
DEFAULT_KEY_TTL = 7200
#: Seconds the membership record of a closed rendezvous lives (etcd-v3): then the id is free.
DEFAULT_CLOSED_TTL = 300
#: Seconds during which transport failures are retried (with back-off, across endpoints).
DEFAULT_RETRY_WINDOW = 3.0
#: Back-off between watches: the first pause, doubling up to the cap (requests: the retry policy's).
BACKOFF_FIRST, BACKOFF_CAP = BACKOFF

#: The configuration keys of the etcd backends (``--rdzv-conf``).
ETCD_CONFIG_KEYS = frozenset(
    {
        "protocol",
        "cacert",
        "cert",
        "key",
        "username",
        "password",
        "password_file",
        "read_timeout",
        "key_ttl",
        "closed_ttl",
        "membership",
    }
)

#: Environment fallbacks for the credentials (parameters win).
USERNAME_ENV = "RDZV_ETCD_USERNAME"
PASSWORD_ENV = "RDZV_ETCD_PASSWORD"

#: The extra that installs each client library: etcd-v3 needs only etcd3gw; python-etcd
#: (etcd's v2 API, source only, 2017) is not pulled in for it.
EXTRA_OF_CLIENT = {"etcd3gw": "rdzv[etcd]", "etcd": "rdzv[etcd-v2]"}


def import_client(module: str) -> ModuleType:
    """Import an etcd client library (``"etcd"`` = python-etcd, ``"etcd3gw"``) on first use.

    Raises:
        ImportError: the library is missing; the message says which extra to install
            (``pip install 'rdzv[etcd]'`` for etcd3gw, ``'rdzv[etcd-v2]'`` for python-etcd).
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        dist = {"etcd": "python-etcd"}.get(module, module)
        raise ImportError(
            f"The rdzv etcd plug-in needs the '{dist}' package, which cannot be imported "
            f"({exc}). Install it with: pip install '{EXTRA_OF_CLIENT.get(module, 'rdzv[etcd]')}'"
        ) from exc


def jittered(delay: float) -> float:
    """``delay`` with jitter: uniform in ``[delay / 2, delay]`` (clients that failed together
    do not all come back at the same instant)."""
    return delay * random.uniform(0.5, 1.0)


class WatchBackoff:
    """Pauses between watches of a key that ended without delivering an event.

    A watch can end at once, over and over: a cancelled or compacted watch, an error message,
    a stream the server (or a proxy) closes right away, a server that lost its data. Each such
    end is :meth:`failed`; the next watch of the key first :meth:`pause`s, for 50 ms doubling
    to 1 s with jitter, never past the caller's deadline. A watch that delivers an event or
    runs to its timeout (a healthy stream) is :meth:`succeeded` and clears the streak, and so
    does a streak older than ``memory`` seconds. Thread-safe; one per adapter, keyed by key,
    so the caller's own loop (re-read, watch again) is slowed down too, not only the retries
    inside one watch.
    """

    def __init__(self, first: float = BACKOFF_FIRST, cap: float = BACKOFF_CAP, memory: float = 10.0) -> None:
        self.first, self.cap, self.memory = first, cap, memory
        self._streaks: dict[str, tuple[int, float]] = {}
        self._lock = threading.Lock()

    def failed(self, key: str) -> None:
        """A watch of ``key`` ended without an event."""
        now = time.monotonic()
        with self._lock:
            count, last = self._streaks.get(key, (0, now))
            self._streaks[key] = (1 if now - last > self.memory else count + 1, now)

    def succeeded(self, key: str) -> None:
        """A watch of ``key`` delivered an event or timed out normally."""
        with self._lock:
            self._streaks.pop(key, None)

    def delay(self, key: str) -> float:
        """Seconds the next watch of ``key`` should wait (before jitter); 0 without a streak."""
        now = time.monotonic()
        with self._lock:
            count, last = self._streaks.get(key, (0, now))
        if count == 0 or now - last > self.memory:
            return 0.0
        return min(self.cap, self.first * 2 ** (count - 1))

    def pause(self, key: str, deadline: float) -> None:
        """Sleep the jittered :meth:`delay` of ``key``, but not past ``deadline`` (monotonic)."""
        delay = self.delay(key)
        if delay > 0:
            time.sleep(max(0.0, min(jittered(delay), deadline - time.monotonic())))


class Versioned(NamedTuple):
    """A value read from etcd with its version.

    Attributes:
        value: The stored bytes (v2 values are decoded from base64 by the adapter).
        version: v2: the key's ``modifiedIndex``; v3: its ``mod_revision``. Every write of the
            key gives a larger version, so ``(value, version)`` is a fencing token.
    """

    value: bytes
    version: int


class OutcomeUnknownError(RendezvousConnectionError):
    """A write that is not idempotent failed after it may have reached etcd (the connection
    broke before the answer): it may or may not have been applied. Callers that can find out
    by reading (the backend's compare-and-set) do so; others see a connection error."""


class WatchOutcome(enum.Enum):
    """How one watch attempt ended (see :meth:`EtcdKV._watch_loop`)."""

    #: An event on the key: the watch answers ``True``.
    EVENT = "event"
    #: The caller's timeout passed on a healthy stream: ``False``.
    TIMEOUT = "timeout"
    #: The re-read before an attempt found the key changed since the start (or absent): ``True``.
    CHANGED = "changed"
    #: The server's revision is below the start (or it is another cluster): it lost its
    #: data. ``True``, so that the caller re-reads; the revision is never watched again.
    LOST = "lost"
    #: Ended without an event but the history may be fine (cancelled, compacted, v2's cleared
    #: index): back off, re-read, resume from the read's revision + 1.
    RESUME = "resume"


@dataclass
class WatchCursor:
    """Where a watch stands: the revision it watches from, and whether the key must be
    re-read before the next attempt (after any attempt that ended without an event)."""

    start: int
    recheck: bool = False


@dataclass(frozen=True)
class EtcdConfig:
    """How to reach etcd; built by :meth:`from_params` or directly.

    Attributes:
        endpoints: One or more ``Endpoint`` (host, port) of the same cluster; requests go to
            the first and fail over to the others.
        protocol: ``"http"`` or ``"https"``.
        cacert: Path of the CA bundle that verifies the server (https only).
        cert: Path of the client certificate (PEM; may also hold the key).
        key: Path of the client certificate's private key.
        username: etcd user (v2: HTTP basic auth; v3: ``/v3/auth/authenticate`` token).
        password: Its password; never shown by ``repr`` or in error messages.
        read_timeout: Seconds one request may take (float > 0). Watches have their own bound.
        key_ttl: Seconds (int >= 1) the rendezvous state outlives its last write.
        closed_ttl: Seconds (int >= 1) the etcd-v3 membership record of a closed rendezvous
            lives (a lease on its summary): late nodes are told it is closed, then a new job
            may reuse the run id.
        retry_window: Seconds during which transport failures are retried.
    """

    endpoints: tuple[Endpoint, ...] = (Endpoint("localhost", DEFAULT_PORT),)
    protocol: str = "http"
    cacert: str | None = None
    cert: str | None = None
    key: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    read_timeout: float = DEFAULT_READ_TIMEOUT
    key_ttl: int = DEFAULT_KEY_TTL
    closed_ttl: int = DEFAULT_CLOSED_TTL
    retry_window: float = DEFAULT_RETRY_WINDOW

    def __post_init__(self) -> None:
        _validate(self)

    @classmethod
    def from_params(cls, params: RendezvousParameters) -> EtcdConfig:
        """Build the configuration from ``params.endpoint`` and ``params.config``.

        ``endpoint`` is ``host[:port]`` (port 2379 by default), ``[ipv6]:port``, or
        ``http(s)://[user:password@]host:port``; several, comma-separated, name the members
        of one cluster. Config keys: ``protocol`` (``http``/``https``; a URL scheme sets it
        too), ``cacert``, ``cert``, ``key`` (file paths), ``username``/``password`` (else
        from the URL, else the password in the file ``password_file``, else the environment
        variables ``RDZV_ETCD_USERNAME`` / ``RDZV_ETCD_PASSWORD``), ``read_timeout`` (seconds, default 60), ``key_ttl``
        (seconds, default 7200), ``closed_ttl`` (seconds, default 300).

        Raises:
            ValueError: a malformed endpoint or config value; the message names the key
                (``endpoint``, ``protocol``, ``cert``, ...) and never the password.
        """
        return cls.from_endpoint(params.endpoint, params.config)

    @classmethod
    def from_endpoint(cls, endpoint: str | None, config: Mapping[str, Any] | None = None) -> EtcdConfig:
        """Like :meth:`from_params`, from an endpoint string and a config mapping."""
        params = RendezvousParameters("etcd", endpoint or "", "config", 1, 1, **dict(config or {}))
        endpoints, scheme, url_user, url_password = _parse_endpoints(endpoint)
        protocol = _parse_protocol(params.get("protocol"), scheme)
        read_timeout = params.get_as_float("read_timeout")  # None (absent or given as None): default
        key_ttl = params.get_as_int("key_ttl")
        closed_ttl = params.get_as_int("closed_ttl")
        return cls(
            endpoints=endpoints,
            protocol=protocol,
            cacert=params.get_as_str("cacert", strip=True),
            cert=params.get_as_str("cert", strip=True),
            key=params.get_as_str("key", strip=True),
            username=params.get_as_str("username", strip=True) or url_user or os.environ.get(USERNAME_ENV) or None,
            password=params.get_as_str("password", strip=True)
            or url_password
            or read_secret_file("password_file", params.get_as_str("password_file", strip=True))
            or os.environ.get(PASSWORD_ENV)
            or None,
            read_timeout=DEFAULT_READ_TIMEOUT if read_timeout is None else read_timeout,
            key_ttl=DEFAULT_KEY_TTL if key_ttl is None else key_ttl,
            closed_ttl=DEFAULT_CLOSED_TTL if closed_ttl is None else closed_ttl,
        )

    @property
    def urls(self) -> list[str]:
        """The base URL of each endpoint (``http://host:port``), without credentials."""
        return [f"{self.protocol}://{_host_for_url(e.host)}:{e.port}" for e in self.endpoints]

    @property
    def connect_timeout(self) -> float:
        """Seconds to establish a TCP (and TLS) connection: ``min(read_timeout, 5)``."""
        return min(self.read_timeout, 5.0)

    def describe(self) -> str:
        """The endpoints for messages: ``http://h1:2379,http://h2:2379`` (no password)."""
        return ",".join(self.urls)


def _host_for_url(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _parse_endpoints(text: str | None) -> tuple[tuple[Endpoint, ...], str | None, str | None, str | None]:
    """Split ``text`` on commas and parse each; return endpoints, the common scheme and creds."""
    parts = [part.strip() for part in (text or "").split(",") if part.strip()] or [""]
    endpoints: list[Endpoint] = []
    schemes: set[str | None] = set()
    user = password = None
    for part in parts:
        try:
            parsed = parse_rendezvous_endpoint(part, DEFAULT_PORT)
        except ValueError as exc:
            raise ValueError(f"The rendezvous option 'endpoint' is invalid: {exc}") from None
        if parsed.scheme not in (None, "http", "https"):
            raise ValueError(
                f"The rendezvous option 'endpoint' must use http:// or https:// for etcd (got '{parsed}')."
            )
        if parsed.path not in ("", "/"):
            raise ValueError(
                f"The rendezvous option 'endpoint' must not have a path for etcd (got '{parsed}{parsed.path}')."
            )
        schemes.add(parsed.scheme)
        user = user or parsed.username
        password = password or parsed.password
        endpoints.append(Endpoint(parsed.host, parsed.port))
    explicit = {s for s in schemes if s}
    if len(explicit) > 1:
        raise ValueError("The rendezvous option 'endpoint' mixes http:// and https:// endpoints.")
    return tuple(endpoints), (explicit.pop() if explicit else None), user, password


def _parse_protocol(value: Any, scheme: str | None) -> str:
    if value is None or (isinstance(value, str) and not value.strip()):
        return scheme or "http"
    protocol = str(value).strip().lower()
    if protocol not in ("http", "https"):
        raise ValueError(f"The rendezvous configuration option 'protocol' must be 'http' or 'https' (got {value!r}).")
    if scheme and scheme != protocol:
        raise ValueError(
            f"The rendezvous configuration option 'protocol' ({protocol}) contradicts the endpoint's scheme ({scheme})."
        )
    return protocol


def _validate(config: EtcdConfig) -> None:
    if not config.endpoints:
        raise ValueError("The rendezvous option 'endpoint' names no etcd endpoint.")
    if config.protocol not in ("http", "https"):
        raise ValueError(
            f"The rendezvous configuration option 'protocol' must be 'http' or 'https' (got {config.protocol!r})."
        )
    for name in ("cacert", "cert", "key"):
        path = getattr(config, name)
        if path is not None and not os.path.isfile(path):
            raise ValueError(f"The rendezvous configuration option '{name}' names no readable file: {path!r}.")
        if path is not None and config.protocol != "https":
            raise ValueError(
                f"The rendezvous configuration option '{name}' needs TLS: set 'protocol=https' or use an https:// endpoint."
            )
    if config.key is not None and config.cert is None:
        raise ValueError("The rendezvous configuration option 'key' needs 'cert' (the client certificate).")
    if bool(config.username) != bool(config.password):
        missing = "password" if config.username else "username"
        raise ValueError(
            f"The rendezvous configuration option '{missing}' is missing: etcd authentication needs both 'username' and 'password'."
        )
    if not config.read_timeout > 0:
        raise ValueError(
            f"The rendezvous configuration option 'read_timeout' must be > 0 seconds (got {config.read_timeout!r})."
        )
    for name in ("key_ttl", "closed_ttl"):
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(
                f"The rendezvous configuration option '{name}' must be an integer >= 1 second (got {value!r})."
            )
    if config.retry_window < 0:
        raise ValueError(f"The retry window must not be negative (got {config.retry_window!r}).")


class EtcdKV(ABC):
    """A versioned key-value view of etcd: what the rendezvous backend and store need.

    Keys are absolute ``str`` paths (``/rdzv/...``, see :mod:`rdzv_etcd.keys`), values are
    ``bytes``, versions are ints (see :class:`Versioned`). Revisions returned by
    :meth:`get_many` and accepted by :meth:`watch` are the cluster-wide counter (v2: the
    etcd index; v3: the store revision): every later change of any key has a larger one.

    All methods raise :class:`~rdzv_core.api.RendezvousConnectionError` (endpoint + cause)
    when etcd cannot be reached within :attr:`EtcdConfig.retry_window` or refuses the request,
    and :class:`~rdzv_core.api.RendezvousStateError` when a stored value cannot be decoded.
    Instances are thread-safe.
    """

    #: ``"v2"`` or ``"v3"``.
    api: ClassVar[str]

    def __init__(self, config: EtcdConfig) -> None:
        self.config = config
        self._clients: list[Any] = [None] * len(config.endpoints)
        self._current = 0
        self._lock = threading.Lock()
        #: Pauses between watches that end without an event (per key, across calls).
        self.watch_backoff = WatchBackoff()

    @property
    def backend_name(self) -> str:
        """The registered backend name: ``"etcd-v2"`` or ``"etcd-v3"``."""
        return f"etcd-{self.api}"

    @property
    def endpoint(self) -> str:
        """The endpoints, for messages (no password)."""
        return self.config.describe()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.endpoint!r})"

    # -- the interface --------------------------------------------------------------------

    @abstractmethod
    def get(self, key: str) -> Versioned | None:
        """Return the value and version of ``key``, or ``None`` when it does not exist."""

    @abstractmethod
    def get_many(self, keys: Sequence[str]) -> tuple[dict[str, Versioned], int]:
        """Read ``keys`` (the absent ones are left out of the dict).

        Returns:
            ``(values, revision)``: watching from ``revision + 1`` sees every change made
            after the values were read.
        """

    @abstractmethod
    def put(self, key: str, value: bytes, ttl: float | None = None) -> int:
        """Write ``key`` unconditionally; return its new version.

        Args:
            ttl: Seconds after which etcd deletes the key (``None``: never). v2 rounds up to
                whole seconds; v3 binds the key to a lease that expires between ``ttl`` and
                ``2 * ttl`` seconds after this write.
        """

    def put_many(self, items: Sequence[tuple[str, bytes]]) -> None:
        """Write several keys (no TTL); v3 does it in one atomic transaction."""
        for key, value in items:
            self.put(key, value)

    @abstractmethod
    def put_if(
        self, key: str, value: bytes, version: int | None, ttl: float | None = None
    ) -> tuple[bool, Versioned | None]:
        """Compare-and-set: write ``key`` only if its version is ``version``.

        Args:
            version: The version the caller read, or ``None`` for "only if absent".
            ttl: As for :meth:`put`.

        Raises:
            OutcomeUnknownError: the connection broke after the request was sent.

        Returns:
            ``(applied, stored)``: whether the write happened, and the key's value and version
            after the call (the caller's on success, the current one on failure, ``None`` when
            the key does not exist).
        """

    @abstractmethod
    def delete(self, key: str) -> bool:
        """Delete ``key``; return whether it existed."""

    def delete_many(self, keys: Sequence[str]) -> None:
        """Delete ``keys`` (absent ones are fine); v3 does it in transactions of 128."""
        for key in keys:
            self.delete(key)

    @abstractmethod
    def list_prefix(self, prefix: str) -> dict[str, Versioned]:
        """Return every key under ``prefix`` (which ends with ``/``) with value and version."""

    @abstractmethod
    def delete_prefix(self, prefix: str) -> int:
        """Delete every key under ``prefix`` (which ends with ``/``); return how many."""

    @abstractmethod
    def child_names(self, prefix: str) -> list[str]:
        """Return the distinct first segments (str, escaped as stored, sorted) of the keys
        under ``prefix`` (which ends with ``/``), without reading their values."""

    @abstractmethod
    def count_prefix(self, prefix: str, max_version: int | None = None) -> int:
        """Return the number of keys under ``prefix`` (which ends with ``/``); with
        ``max_version``, only those whose version is at most that."""

    @abstractmethod
    def watch(self, key: str, start_revision: int, timeout: float) -> bool:
        """Block until ``key`` changes at a revision ``>= start_revision``, or ``timeout``
        seconds pass.

        Changes that happened before the call but at or after ``start_revision`` are reported
        at once (etcd replays its history), so a read followed by a watch from the read's
        revision + 1 never misses a change.

        Transport failures are retried for up to ``timeout`` (at least ``retry_window``),
        so a watch survives an etcd restart without missing a change. A watch that ends
        without an event (transport failure, cancelled or compacted watch, a stream closed at
        once, v2's cleared event index) is retried only after a jittered back-off
        (:class:`WatchBackoff`) and after re-reading ``key``: changed since
        ``start_revision`` (or absent) -> ``True``; unchanged -> the watch resumes from the
        read's revision + 1, which etcd still has. A server whose revision is below
        ``start_revision - 1`` (or, v3, that reports another cluster id) lost its data: that
        is reported as a change too, never watched from the impossible revision again.

        Returns:
            ``True`` on a change (also a possible one: a lost history or lost data; the
            caller re-reads), ``False`` on timeout.
        """

    def close(self) -> None:
        """Release pooled connections; the instance stays usable (it reconnects)."""
        with self._lock:
            clients, self._clients = self._clients, [None] * len(self._clients)
        for client in clients:
            if client is not None:
                self._disconnect(client)

    # -- what adapters provide ------------------------------------------------------------

    @abstractmethod
    def _connect(self, endpoint: Endpoint, url: str) -> Any:
        """Create the library client of one endpoint (no network traffic)."""

    @abstractmethod
    def _disconnect(self, client: Any) -> None:
        """Release the connections of a library client."""

    @abstractmethod
    def _classify(self, exc: BaseException) -> Failure | None:
        """Return what ``exc`` means, or ``None`` when it is not the client library's error
        (it then propagates unchanged)."""

    def _describe(self, exc: BaseException) -> str:
        """The cause of a failure for messages (the password is masked afterwards)."""
        return f"{type(exc).__name__}: {exc}"

    # -- shared machinery -----------------------------------------------------------------

    def _client(self) -> tuple[int, Any]:
        with self._lock:
            index = self._current
            client = self._clients[index]
            if client is None:
                client = self._clients[index] = self._connect(self.config.endpoints[index], self.config.urls[index])
            return index, client

    def _fail_over(self, index: int) -> None:
        with self._lock:
            if self._current == index:
                self._current = (index + 1) % len(self._clients)

    def _call(self, op: str, fn: Callable[[Any], T], *, idempotent: bool = True, retry_until: float | None = None) -> T:
        """Run ``fn(client)``, retrying transport failures for up to ``retry_window`` seconds
        (or until the ``time.monotonic()`` deadline ``retry_until``, if later: a watch keeps
        trying for as long as its caller is willing to wait, e.g. across an etcd restart).

        Each failure moves to the next endpoint; the policy is
        :func:`rdzv_core.retry.call_with_retry`'s (back-off doubling from 50 ms to 1 s, each
        pause jittered down to half of it): a failure that may have reached etcd
        (:attr:`Failure.MAYBE_SENT`) is retried only when ``idempotent`` (else
        :class:`OutcomeUnknownError`); a refusal (:attr:`Failure.REFUSED`) never.

        Raises:
            RendezvousConnectionError: still failing; names ``op``, the endpoints and the cause.
        """
        deadline = max(time.monotonic() + self.config.retry_window, retry_until or 0.0)

        def attempt() -> T:
            index, client = self._client()
            try:
                return fn(client)
            except Exception as exc:
                if self._classify(exc) in (Failure.NOT_SENT, Failure.MAYBE_SENT):
                    self._fail_over(index)
                raise

        def give_up(exc: BaseException, failure: Failure, attempts: int, elapsed: float) -> Exception:
            unknown = failure is Failure.MAYBE_SENT and not idempotent
            return self.connection_error(
                op, self._describe(exc), OutcomeUnknownError if unknown else RendezvousConnectionError
            )

        def on_retry(exc: BaseException, attempts: int, pause: float) -> None:
            logger.debug("%s; retrying in %.2f s", self.connection_error(op, self._describe(exc)), pause)

        return call_with_retry(
            attempt, self._classify, give_up, deadline=deadline, idempotent=idempotent, on_retry=on_retry
        )

    def _watch_loop(
        self, key: str, start_revision: int, timeout: float, attempt: Callable[[Any, WatchCursor, float], WatchOutcome]
    ) -> bool:
        """The :meth:`watch` of both adapters: ``attempt(client, cursor, deadline)`` re-reads
        ``key`` when ``cursor.recheck`` (moving ``cursor.start`` to the read's revision + 1, or
        answering CHANGED/LOST), sets ``cursor.recheck`` and watches once.

        Transport failures (and streams that end at once) are retried inside one
        :meth:`_call` (jittered back-off, fail-over), each retry re-reading first; RESUME
        comes back here and is retried after :attr:`watch_backoff`'s pause. Every end without
        an event counts in :attr:`watch_backoff`, so a caller that watches again at once
        (re-read, watch) is slowed down as well.
        """
        deadline = time.monotonic() + timeout
        cursor = WatchCursor(max(1, start_revision))
        backoff = self.watch_backoff
        while True:
            backoff.pause(key, deadline)
            if time.monotonic() >= deadline:
                return False
            try:
                outcome = self._call("watch", lambda client: attempt(client, cursor, deadline), retry_until=deadline)
            except RendezvousConnectionError:
                backoff.failed(key)
                raise
            if outcome in (WatchOutcome.EVENT, WatchOutcome.TIMEOUT):
                backoff.succeeded(key)
                return outcome is WatchOutcome.EVENT
            backoff.failed(key)
            if outcome is WatchOutcome.LOST:
                logger.warning(
                    "etcd at %s does not have revision %d any more (it lost its data or is another cluster); "
                    "reporting a change so that the state is read again.",
                    self.endpoint,
                    cursor.start - 1,
                )
                return True
            if outcome is WatchOutcome.CHANGED:
                return True
            cursor.recheck = True
            logger.debug("The etcd watch of %r ended without an event; re-reading and watching again.", key)

    def connection_error(
        self, op: str, cause: str, kind: type[RendezvousConnectionError] = RendezvousConnectionError
    ) -> RendezvousConnectionError:
        """Build the error for a failed ``op``: endpoint and cause, with the password masked."""
        text = scrub(cause, (self.config.password,))
        outcome = " (it may or may not have been applied)" if kind is OutcomeUnknownError else ""
        return kind(f"The etcd {self.api} request '{op}' to {self.endpoint} failed{outcome}: {text}")
