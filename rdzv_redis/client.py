"""Connection configuration, the shared Redis client, retries and error mapping.

* :class:`RedisConfig` — what to connect to, parsed and validated from
  :class:`~rdzv_core.api.RendezvousParameters`. Its ``repr`` never shows the password.
  With ``sentinel_master`` set, the endpoint lists Redis Sentinels and the client follows
  the master they name, across fail-overs (see :meth:`RedisConfig.from_params`). With
  ``cluster=true``, the endpoint lists startup nodes of a Redis Cluster and the client is
  redis-py's ``RedisCluster`` (follows ``MOVED``/``ASK``, refreshes its slot map on a
  fail-over); notifications then travel on sharded pub/sub (``SPUBLISH``/``SSUBSCRIBE``).
* :class:`RedisClient` — one per process and (endpoint, credentials, db, TLS, timeouts):
  a bounded blocking connection pool, the registered Lua scripts, and one
  :class:`~rdzv_redis.notify.Notifier` (one pub/sub connection, read by the waiting caller:
  no listener thread). Backends and stores :meth:`~RedisClient.acquire` it and
  :meth:`~RedisClient.release` it; the last release closes it. :meth:`~RedisClient.create`
  makes a private one (one per node, as on separate machines).
* :meth:`RedisClient.call` — runs one operation, retrying transient failures with a short
  jittered exponential back-off within a bounded budget, and maps redis-py's exceptions to
  the rendezvous API's: :class:`~rdzv_core.api.RendezvousConnectionError` (unreachable,
  authentication failed, command refused) and :class:`~rdzv_core.api.RendezvousStateError`
  (a key of the wrong type).

redis-py is imported lazily (:func:`import_redis`), so ``import rdzv_redis`` works without it.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, TypeVar

from rdzv_core.api import RendezvousConnectionError, RendezvousParameters, RendezvousStateError
from rdzv_core.retry import Failure, call_with_retry
from rdzv_core.utils import Endpoint, parse_rendezvous_endpoint, read_secret_file, scrub
from rdzv_redis.lua import scripts_for
from rdzv_redis.notify import Notifier
from rdzv_redis.shard_pubsub import ShardPubSub

__all__ = [
    "DEFAULT_PORT",
    "DEFAULT_SENTINEL_PORT",
    "PASSWORD_ENV",
    "SENTINEL_PASSWORD_ENV",
    "REDIS_CONFIG_KEYS",
    "RedisConfig",
    "RedisClient",
    "import_redis",
]

logger = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_PORT = 6379
#: Port of a sentinel address given without one.
DEFAULT_SENTINEL_PORT = 26379
#: Environment variable read for the password when neither the config nor the URL has one.
PASSWORD_ENV = "RDZV_REDIS_PASSWORD"
#: Environment variable read for the sentinels' own password (``sentinel_password``).
SENTINEL_PASSWORD_ENV = "RDZV_REDIS_SENTINEL_PASSWORD"
#: Configuration keys of the Redis plug-in (``--rdzv-conf`` / ``RendezvousParameters``).
REDIS_CONFIG_KEYS = frozenset(
    {
        "db",
        "username",
        "password",
        "ssl",
        "ssl_ca_certs",
        "ssl_certfile",
        "ssl_keyfile",
        "socket_timeout",
        "connect_timeout",
        "retry_timeout",
        "max_connections",
        "key_ttl",
        "closed_ttl",
        "sentinel_master",
        "sentinel_password",
        "password_file",
        "cluster",
        "read_from_replicas",
    }
)
#: Longest cause (characters) quoted in an error message.
_MAX_CAUSE = 300


def import_redis() -> ModuleType:
    """Return the ``redis`` module.

    Raises:
        ImportError: redis-py is not installed; the message says ``pip install 'rdzv[redis]'``.
    """
    try:
        import redis
    except ImportError as exc:
        raise ImportError("The Redis rendezvous backend needs redis-py: pip install 'rdzv[redis]'") from exc
    return redis


@dataclass(frozen=True)
class RedisConfig:
    """Where and how to connect to Redis. Build it with :meth:`from_params`.

    Attributes:
        host, port: The server (port default 6379).
        db: Database number (``/N`` of the URL or config ``db``; default 0).
        username: ACL user (``user@`` of the URL or config ``username``), or ``None``.
        password: Config ``password``, else the URL's, else the content of the file named by
            config ``password_file``, else env ``RDZV_REDIS_PASSWORD``.
            Never shown by ``repr`` or in messages.
        tls: TLS on (``rediss://``, config ``ssl=true``, or any ``ssl_*`` file given).
        ssl_ca_certs, ssl_certfile, ssl_keyfile: PEM file paths for TLS, or ``None``.
        socket_timeout: Seconds a command may take on the wire (default 10).
        connect_timeout: Seconds to open a connection (default 5).
        retry_timeout: Seconds an operation keeps retrying transient errors (default 10).
        max_connections: Connections of the process-wide pool, pub/sub included (default 64).
        key_ttl: Seconds the keys of a run live after its last write or keep-alive
            (default 86400 = 24 h).
        closed_ttl: Seconds the keys of a run live once it is closed (default 300): late
            nodes of the finished job still see it closed, then a new job may reuse the run id.
        sentinels: Sentinel mode: the ``(host, port)`` of each sentinel (from the endpoint);
            empty otherwise. ``host``/``port`` are then the first sentinel's.
        sentinel_master: Sentinel mode: the name of the monitored master (config
            ``sentinel_master``), or ``None``.
        sentinel_password: The sentinels' own ``requirepass`` (config ``sentinel_password``,
            else env ``RDZV_REDIS_SENTINEL_PASSWORD``), or ``None``. Never shown.
        cluster: Redis Cluster mode (config ``cluster=true``).
        cluster_nodes: Cluster mode: the ``(host, port)`` of each startup node (from the
            endpoint); empty otherwise. ``host``/``port`` are then the first node's.
    """

    host: str
    port: int = DEFAULT_PORT
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = False
    ssl_ca_certs: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    socket_timeout: float = 10.0
    connect_timeout: float = 5.0
    retry_timeout: float = 10.0
    max_connections: int = 64
    key_ttl: float = 86400.0
    closed_ttl: float = 300.0
    sentinels: tuple[tuple[str, int], ...] = ()
    sentinel_master: str | None = None
    sentinel_password: str | None = field(default=None, repr=False)
    cluster: bool = False
    cluster_nodes: tuple[tuple[str, int], ...] = ()

    @classmethod
    def from_params(cls, params: RendezvousParameters) -> RedisConfig:
        """Parse ``params.endpoint`` (``host``, ``host:port``, ``redis://[user:password@]host:port/db``,
        ``rediss://...``) and the Redis keys of ``params.config``.

        **Sentinel mode**: with config ``sentinel_master=<name>``, the endpoint is the
        comma-separated list of the sentinels, ``host[:port]`` each (port 26379 by default),
        e.g. ``s1:26379,s2:26379,s3:26379``. The client asks them for the master's address
        and follows fail-overs; ``password``/``username``/``db``/``ssl*`` apply to the master
        (and its replicas), ``sentinel_password`` to the sentinels. Credentials come from the
        config or the environment, never from the endpoint.

        **Cluster mode**: with config ``cluster=true``, the endpoint is one or more nodes of a
        Redis Cluster, ``host[:port]`` separated by commas (port 6379 by default), e.g.
        ``node1:7000,node2:7001``; the client discovers the others (``CLUSTER SLOTS``).
        ``username``/``password``/``ssl*`` apply to every node; ``db`` must be 0 and
        ``read_from_replicas`` false (the default: replicas lag, and the rendezvous needs
        the master's answer). ``cluster`` and ``sentinel_master`` exclude each other.

        Raises:
            ValueError: a malformed endpoint or a bad value; the message names the key and
                never contains the password.
        """
        if any(value is None for value in params.config.values()):  # None means "the default"
            given = {key: value for key, value in params.config.items() if value is not None}
            params = RendezvousParameters(
                params.backend,
                params.endpoint,
                params.run_id,
                params.min_nodes,
                params.max_nodes,
                params.local_addr,
                **given,
            )
        ssl_files = {k: params.get_as_str(k) for k in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile")}
        master = params.get_as_str("sentinel_master")
        cluster = bool(params.get_as_bool("cluster", False))
        _check_read_from_replicas(params, cluster)
        cluster_nodes: tuple[tuple[str, int], ...] = ()
        sentinels: tuple[tuple[str, int], ...] = ()
        sentinel_password: str | None = None
        if cluster and master is not None:
            raise ValueError(
                "The rendezvous configuration options 'cluster' and 'sentinel_master' exclude each other: "
                "Redis Cluster fails over by itself (give its nodes as the endpoint), Sentinel watches one master."
            )
        if cluster:
            cluster_nodes = _parse_addresses(params.endpoint, "With 'cluster=true'", DEFAULT_PORT)
            endpoint = Endpoint(*cluster_nodes[0])
            if "sentinel_password" in params.config:
                raise ValueError(
                    "The rendezvous configuration option 'sentinel_password' needs 'sentinel_master', not 'cluster'."
                )
        elif master is not None:
            sentinels = _parse_sentinels(params.endpoint, master)
            endpoint = Endpoint(*sentinels[0])
            sentinel_password = params.get_as_str("sentinel_password") or os.environ.get(SENTINEL_PASSWORD_ENV) or None
        else:
            if "sentinel_password" in params.config:
                raise ValueError(
                    "The rendezvous configuration option 'sentinel_password' needs 'sentinel_master' (the name of the master the sentinels monitor)."
                )
            if "," in (params.endpoint or ""):
                raise ValueError(
                    "The Redis rendezvous endpoint lists several addresses: set the configuration option 'sentinel_master' "
                    "to use them as Redis Sentinels, or 'cluster=true' as nodes of a Redis Cluster, or give one "
                    "'host[:port]' or URL."
                )
            endpoint = parse_rendezvous_endpoint(params.endpoint, DEFAULT_PORT)
        if endpoint.scheme not in (None, "redis", "rediss"):
            raise ValueError(
                f"The Redis rendezvous endpoint '{endpoint}' must be 'host[:port]', 'redis://...' or 'rediss://...'."
            )
        tls = endpoint.scheme == "rediss" or bool(params.get_as_bool("ssl", False)) or any(ssl_files.values())
        return cls(
            host=endpoint.host,
            port=endpoint.port,
            db=_parse_cluster_db(params, endpoint) if cluster else _parse_db(params, endpoint),
            username=params.get_as_str("username") or endpoint.username,
            password=params.get_as_str("password")
            or endpoint.password
            or read_secret_file("password_file", params.get_as_str("password_file", strip=True))
            or os.environ.get(PASSWORD_ENV)
            or None,
            tls=tls,
            sentinels=sentinels,
            sentinel_master=master,
            sentinel_password=sentinel_password,
            cluster=cluster,
            cluster_nodes=cluster_nodes,
            **ssl_files,
            socket_timeout=_positive(params, "socket_timeout", cls.socket_timeout),
            connect_timeout=_positive(params, "connect_timeout", cls.connect_timeout),
            retry_timeout=_seconds(params, "retry_timeout", cls.retry_timeout, 0.0),
            max_connections=_int_at_least(params, "max_connections", cls.max_connections, 2),
            key_ttl=_seconds(params, "key_ttl", cls.key_ttl, 1.0),
            closed_ttl=_seconds(params, "closed_ttl", cls.closed_ttl, 1.0),
        )

    @property
    def display(self) -> str:
        """``redis[s]://host:port/db``, in Sentinel mode
        ``redis[s]+sentinel://s1:26379,s2:26379/master/db`` — safe to log: no user name, no
        password."""
        scheme = "rediss" if self.tls else "redis"
        if self.cluster:
            where = ",".join(f"{_bracket(host)}:{port}" for host, port in self.cluster_nodes)
            return f"{scheme}+cluster://{where}"
        if self.sentinel_master:
            where = ",".join(f"{_bracket(host)}:{port}" for host, port in self.sentinels)
            return f"{scheme}+sentinel://{where}/{self.sentinel_master}/{self.db}"
        return f"{scheme}://{_bracket(self.host)}:{self.port}/{self.db}"

    def connection_key(self) -> tuple[Any, ...]:
        """The identity under which clients are shared: every field but ``key_ttl`` and
        ``closed_ttl``, plus the process id (a forked child must not share its parent's
        sockets or threads)."""
        return (os.getpid(), *dataclasses.astuple(dataclasses.replace(self, key_ttl=0.0, closed_ttl=0.0)))


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _parse_sentinels(text: str | None, master: str) -> tuple[tuple[str, int], ...]:
    """The sentinel addresses of a Sentinel-mode endpoint (``host[:port]`` separated by commas)."""
    if not master.strip() or any(c.isspace() for c in master):
        raise ValueError(
            f"The rendezvous configuration option 'sentinel_master' must be a master name without spaces (got {master!r})."
        )
    return _parse_addresses(text, "With 'sentinel_master'", DEFAULT_SENTINEL_PORT, "sentinels")


def _parse_addresses(
    text: str | None, mode: str, default_port: int, what: str = "nodes"
) -> tuple[tuple[str, int], ...]:
    """The ``(host, port)`` list of an endpoint that names several servers (``host[:port]``
    separated by commas), without duplicates; ``mode`` starts the error messages."""
    parts = [part.strip() for part in (text or "").split(",") if part.strip()]
    if not parts:
        raise ValueError(f"{mode}, the Redis rendezvous endpoint must list the {what}: 'host[:port],host[:port],...'.")
    addresses: list[tuple[str, int]] = []
    for part in parts:
        if "://" in part or "@" in part:  # never quote it: it may hold a password
            raise ValueError(
                f"{mode}, the Redis rendezvous endpoint lists the {what} as 'host[:port]' separated by commas "
                "(no URL, no credentials: use the 'username', 'password' and 'ssl' options)."
            )
        endpoint = parse_rendezvous_endpoint(part, default_port)
        addresses.append((endpoint.host, endpoint.port))
    return tuple(dict.fromkeys(addresses))


def _check_read_from_replicas(params: RendezvousParameters, cluster: bool) -> None:
    """``read_from_replicas`` is accepted in cluster mode, and only false."""
    value = params.get_as_bool("read_from_replicas", False)
    if "read_from_replicas" in params.config and not cluster:
        raise ValueError("The rendezvous configuration option 'read_from_replicas' needs 'cluster=true'.")
    if value:
        raise ValueError(
            "The rendezvous configuration option 'read_from_replicas' must be false (got "
            f"{params.config['read_from_replicas']!r}): a replica may lag its master, and the rendezvous reads what "
            "it just wrote."
        )


def _seconds(params: RendezvousParameters, key: str, default: float, minimum: float) -> float:
    value = params.get_as_float(key, default, minimum=minimum)
    return default if value is None else value


def _positive(params: RendezvousParameters, key: str, default: float) -> float:
    value = _seconds(params, key, default, 0.0)
    if value <= 0:
        raise ValueError(f"The rendezvous configuration option '{key}' must be > 0 seconds (got {value!r}).")
    return value


def _int_at_least(params: RendezvousParameters, key: str, default: int, minimum: int) -> int:
    value = params.get_as_int(key, default)
    value = default if value is None else value
    if value < minimum:
        raise ValueError(f"The rendezvous configuration option '{key}' must be >= {minimum} (got {value}).")
    return value


def _parse_cluster_db(params: RendezvousParameters, endpoint: Endpoint) -> int:
    """Redis Cluster has database 0 only."""
    db = _int_at_least(params, "db", 0, 0)
    if db != 0:
        raise ValueError(f"The rendezvous configuration option 'db' must be 0 with 'cluster=true' (got {db}).")
    return db


def _parse_db(params: RendezvousParameters, endpoint: Endpoint) -> int:
    path = endpoint.path.strip("/")
    if path and not path.isdigit():
        raise ValueError(
            f"The database ('db') in the Redis endpoint '{endpoint}/{path}' must be a non-negative integer."
        )
    db = _int_at_least(params, "db", int(path) if path else 0, 0)
    if path and "db" in params.config and db != int(path):
        raise ValueError(
            f"The rendezvous configuration option 'db' ({db}) contradicts the database of the endpoint '{endpoint}/{path}'."
        )
    return db


# -- error classification ---------------------------------------------------------------------

_AUTH = "auth"
_TRANSIENT = "transient"
_REJECTED_BEFORE_RUN = "rejected"  # transient, and the server did not run the command
_WRONG_TYPE = "wrongtype"
_OTHER = "other"
#: What each kind means for the retry policy.
_FAILURE_OF = {
    _REJECTED_BEFORE_RUN: Failure.NOT_SENT,
    _TRANSIENT: Failure.MAYBE_SENT,
    _AUTH: Failure.REFUSED,
    _WRONG_TYPE: Failure.REFUSED,
    _OTHER: Failure.REFUSED,
}


#: How the servers' authentication failures read inside a ``RedisClusterException``.
_CLUSTER_AUTH_MARKERS = re.compile(
    r"invalid username-password|WRONGPASS|NOAUTH|NOPERM|no permissions|Authentication required"
)


def _classify(redis: ModuleType, exc: BaseException, cluster: bool = False) -> str:
    """Sort a redis-py exception into one of the kinds above (``cluster``: the client is a
    ``RedisCluster``, which follows redirects itself)."""
    errors = redis.exceptions
    if isinstance(exc, errors.RedisClusterException):
        # The cluster client found no node to send to (slot map without the slot, no startup
        # node reachable): nothing was sent; unless every startup node refused our
        # credentials (redis-py quotes the server's error in the message).
        if _CLUSTER_AUTH_MARKERS.search(str(exc)):
            return _AUTH
        return _REJECTED_BEFORE_RUN
    if isinstance(exc, errors.AskError):
        # MOVED/ASK: the node did not run the command. The cluster client follows redirects,
        # so one left over is a slot changing hands (retry); a plain client never follows.
        return _REJECTED_BEFORE_RUN if cluster else _OTHER
    if isinstance(exc, errors.ClusterError) and not isinstance(exc, errors.ClusterDownError):
        return _TRANSIENT  # "TTL exhausted": redirected and failing until the budget ran out
    auth_types = (errors.AuthenticationError, errors.AuthorizationError, errors.AuthenticationWrongNumberOfArgsError)
    text = str(exc)
    if isinstance(exc, auth_types) or text.startswith(("NOAUTH", "WRONGPASS", "NOPERM")):
        return _AUTH
    if text.startswith("No master found") and " - auth:" in text and " - network:" not in text:
        return _AUTH  # every sentinel refused our credentials
    if isinstance(exc, (errors.BusyLoadingError, errors.ReadOnlyError, errors.TryAgainError, errors.ClusterDownError)):
        return _REJECTED_BEFORE_RUN
    if isinstance(exc, (errors.ConnectionError, errors.TimeoutError, OSError)):
        # Failing to connect, or to get a pooled connection, means nothing was sent; so do
        # "no master" from the sentinels and a master demoted to a replica (READONLY).
        if any(
            marker in text
            for marker in (
                "connecting to",
                "No connection available",
                "No master found",
                "previous master is now a slave",
            )
        ):
            return _REJECTED_BEFORE_RUN
        return _TRANSIENT
    if text.startswith("WRONGTYPE"):
        return _WRONG_TYPE
    return _OTHER


class RedisClient:
    """A process-wide, reference-counted Redis client for one :class:`RedisConfig`.

    Do not construct it directly: use :meth:`acquire` and :meth:`release`.

    Attributes:
        config: The configuration.
        redis: The ``redis.Redis`` object (bytes replies) on a ``BlockingConnectionPool``.
        errors: The ``redis.exceptions`` module.
        scripts: Script name (see :data:`rdzv_redis.lua.ALL_SCRIPTS`) -> redis-py ``Script``.
        notifier: The pub/sub :class:`~rdzv_redis.notify.Notifier` of this client.
    """

    _registry: dict[tuple[Any, ...], RedisClient] = {}
    _registry_lock = threading.Lock()

    def __init__(self, config: RedisConfig, shard_key: str | None = None) -> None:
        self.config = config
        self._redis_module = import_redis()
        self.errors = self._redis_module.exceptions
        self._sentinels: list[Any] = []
        self._refs = 0
        self._closed = False
        self._shard_key = shard_key
        self._pubsub_redis: Any = None
        make_pubsub: Callable[[], Any]
        if config.cluster:
            # Discovering the cluster (CLUSTER SLOTS) is the first request: retried and
            # translated like any other.
            self.redis = self.call("connect", lambda: self._make_cluster(config))
            make_pubsub = ShardPubSub.factory(self.redis, _as_is)
        else:
            self.redis = self._make_redis(config)
            # The pub/sub connection comes from a pool of its own: taken from the command pool,
            # it would be the connection the PING at creation opened, and a new client's first
            # command would pay for a connection handshake again.
            self._pubsub_redis = self._make_redis(config)
            # As is: redis-py's default handler of RESP3 pub/sub pushes formats every message
            # into a debug string and calls logging.getLogger (a process-wide lock) each time.
            pubsub_redis = self._pubsub_redis
            make_pubsub = lambda: pubsub_redis.pubsub(ignore_subscribe_messages=False, push_handler_func=_as_is)  # noqa: E731
        sources = scripts_for(config.cluster)
        register = functools.partial(_ClusterScript, self.redis) if config.cluster else self.redis.register_script
        self.scripts = {name: register(source) for name, source in sources.items()}
        self.notifier = Notifier(
            make_pubsub,
            config.display,
            self._scrub,
            refused=lambda exc: (
                isinstance(exc, self.errors.NoPermissionError) or _classify(self._redis_module, exc) == _AUTH
            ),
        )

    def __repr__(self) -> str:
        return f"RedisClient({self.config.display}, refs={self._refs})"

    @classmethod
    def acquire(cls, config: RedisConfig, shard_key: str | None = None) -> RedisClient:
        """Return the shared client of ``config`` (created and PINGed on first use).

        In cluster mode clients are shared per ``shard_key`` too (a key of the run, e.g.
        ``rdzv:{R}:state``): each listens on the shard serving that key's slot, with one
        sharded pub/sub connection, and PINGs that shard's master when created.

        Raises:
            RendezvousConnectionError: the server cannot be reached within the retry budget,
                or authentication failed.
            ImportError: redis-py is not installed.
        """
        key = cls._registry_key(config, shard_key)
        with cls._registry_lock:
            client = cls._registry.get(key)
            if client is None:
                client = cls._pinged(config, shard_key)
                cls._registry[key] = client
            client._refs += 1
            return client

    @staticmethod
    def _registry_key(config: RedisConfig, shard_key: str | None) -> tuple[Any, ...]:
        return (*config.connection_key(), shard_key if config.cluster else None)

    @classmethod
    def create(cls, config: RedisConfig, shard_key: str | None = None) -> RedisClient:
        """Return a new client of ``config`` that no other caller shares (its own pool and
        pub/sub listener), PINGed, with one reference. Release it like a shared one.

        Raises:
            RendezvousConnectionError, ImportError: as :meth:`acquire`.
        """
        client = cls._pinged(config, shard_key)
        client._refs = 1
        return client

    @classmethod
    def _pinged(cls, config: RedisConfig, shard_key: str | None = None) -> RedisClient:
        """A new client without references that answered ``PING`` (shut down if it did not);
        in cluster mode, the master serving ``shard_key``'s slot answers (any master without
        one)."""
        client = cls(config, shard_key)
        try:
            client.call("PING", client._ping)
        except BaseException:
            client._shutdown()
            raise
        return client

    def retain(self) -> None:
        """Add one reference (each holder calls :meth:`release` once)."""
        with self._registry_lock:
            self._refs += 1

    def release(self) -> None:
        """Drop one reference; the last one stops the listener and closes the connections."""
        with self._registry_lock:
            self._refs -= 1
            if self._refs > 0:
                return
            key = self._registry_key(self.config, self._shard_key)
            if self._registry.get(key) is self:
                del self._registry[key]
        self._shutdown()

    def _ping(self) -> Any:
        if not self.config.cluster:
            return self.redis.ping()
        cluster = self.redis
        if self._shard_key is None:
            return cluster.execute_command("PING", target_nodes=cluster.get_random_primary_node())
        return cluster.execute_command("PING", target_nodes=cluster.get_node_from_key(self._shard_key))

    def _shutdown(self) -> None:
        self._closed = True
        self.notifier.close()
        if self.config.cluster:
            try:
                self.redis.close()
            except Exception:  # best effort: sockets may already be gone
                logger.debug("Disconnecting from %s failed", self.config.display, exc_info=True)
            return
        pools = [self.redis.connection_pool, self._pubsub_redis.connection_pool]
        pools += [sentinel.connection_pool for group in self._sentinels for sentinel in group.sentinels]
        for pool in pools:
            try:
                pool.disconnect()
            except Exception:  # best effort: sockets may already be gone
                logger.debug("Disconnecting from %s failed", self.config.display, exc_info=True)

    def _make_redis(self, config: RedisConfig) -> Any:
        """The ``redis.Redis`` of ``config``: on a ``BlockingConnectionPool``, or in Sentinel
        mode from ``Sentinel(...).master_for(...)`` on a blocking sentinel-managed pool (every
        new connection, pub/sub included, asks the sentinels where the master is)."""
        redis = self._redis_module
        if not config.sentinel_master:
            return redis.Redis(connection_pool=redis.BlockingConnectionPool(**self._pool_kwargs(config)))
        from redis.sentinel import Sentinel

        sentinel_kwargs: dict[str, Any] = {
            "password": config.sentinel_password,
            "socket_timeout": config.socket_timeout,
            "socket_connect_timeout": config.connect_timeout,
            "retry": _no_retry(),
        }
        if config.tls:
            sentinel_kwargs.update(
                ssl=True,
                ssl_ca_certs=config.ssl_ca_certs,
                ssl_certfile=config.ssl_certfile,
                ssl_keyfile=config.ssl_keyfile,
            )
        sentinel = Sentinel(list(config.sentinels), sentinel_kwargs=sentinel_kwargs)
        self._sentinels.append(sentinel)
        kwargs = self._pool_kwargs(config)
        for key in ("host", "port"):
            del kwargs[key]
        if config.tls:
            from redis.sentinel import SentinelManagedSSLConnection

            kwargs["connection_class"] = SentinelManagedSSLConnection
        else:
            kwargs.pop("connection_class", None)
        return sentinel.master_for(config.sentinel_master, connection_pool_class=_blocking_sentinel_pool(), **kwargs)

    def _make_cluster(self, config: RedisConfig) -> Any:
        """The ``redis.cluster.RedisCluster`` of ``config``: the startup nodes of the endpoint,
        the same credentials, TLS and timeouts on every node, reads from masters only, and no
        retry of its own (:meth:`call` retries; a failed request still makes redis-py refresh
        its slot map, so the next attempt reaches the promoted replica)."""
        from redis.cluster import ClusterNode, RedisCluster

        kwargs = self._pool_kwargs(config)
        for key in ("host", "port", "db", "retry", "timeout"):
            kwargs.pop(key, None)
        kwargs.pop("connection_class", None)
        if config.tls:
            kwargs["ssl"] = True
        return RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in config.cluster_nodes],
            retry=_no_retry(),  # reads go to masters only: redis-py's default, no load balancing
            require_full_coverage=False,
            **kwargs,
        )

    def _pool_kwargs(self, config: RedisConfig) -> dict[str, Any]:
        redis = self._redis_module
        kwargs: dict[str, Any] = {
            "host": config.host,
            "port": config.port,
            "db": config.db,
            "username": config.username,
            "password": config.password,
            "socket_timeout": config.socket_timeout,
            "socket_connect_timeout": config.connect_timeout,
            "socket_keepalive": True,
            "retry": _no_retry(),  # retries are ours (call()), bounded and classified
            "client_name": "rdzv",
            **_no_lib_info(),
        }
        if config.tls:
            kwargs.update(
                connection_class=redis.SSLConnection,
                ssl_ca_certs=config.ssl_ca_certs,
                ssl_certfile=config.ssl_certfile,
                ssl_keyfile=config.ssl_keyfile,
            )
        kwargs.update(
            max_connections=config.max_connections, timeout=max(config.connect_timeout, config.socket_timeout)
        )
        return kwargs

    # -- operations --------------------------------------------------------------------------

    def call(self, what: str, fn: Callable[[], T], *, idempotent: bool = True, deadline: float | None = None) -> T:
        """Run ``fn`` (one Redis operation), retrying transient failures.

        The policy is :func:`rdzv_core.retry.call_with_retry`'s (jittered exponential
        back-off, 50 ms doubling to 1 s) until :attr:`RedisConfig.retry_timeout` seconds have
        passed or ``deadline`` (a ``time.monotonic()`` value) is reached. When ``idempotent``
        is false, only failures where the command surely did not run are retried (connecting
        failed, ``LOADING``, ``READONLY``, ...).

        Args:
            what: Names the operation in error messages (no secrets).

        Raises:
            RendezvousConnectionError: still failing at the end of the budget (names the
                endpoint, the attempts and the cause); authentication failed (immediately);
                the server refused the command.
            RendezvousStateError: a key holds a value of the wrong Redis type.
            Exception: whatever ``fn`` raises that is not a redis-py error, unchanged.
        """
        redis = self._redis_module
        cluster = self.config.cluster
        end = time.monotonic() + self.config.retry_timeout
        if deadline is not None:
            end = min(end, deadline)

        def classify(exc: BaseException) -> Failure | None:
            known = (redis.RedisError, redis.exceptions.RedisClusterException, OSError)
            return _FAILURE_OF[_classify(redis, exc, cluster)] if isinstance(exc, known) else None

        def give_up(exc: BaseException, failure: Failure, attempts: int, elapsed: float) -> Exception:
            return self._translate(what, exc, _classify(redis, exc, cluster), attempts, elapsed)

        def on_retry(exc: BaseException, attempt: int, pause: float) -> None:
            logger.debug(
                "%s on %s failed (attempt %d), retrying in %.3f s: %s",
                what,
                self.config.display,
                attempt,
                pause,
                self._scrub(str(exc)),
            )

        return call_with_retry(
            fn,
            classify,
            give_up,
            deadline=end,
            idempotent=idempotent,
            cancelled=lambda: self._closed,
            on_retry=on_retry,
        )

    def _translate(self, what: str, exc: BaseException, kind: str, attempts: int, elapsed: float) -> Exception:
        where = self.config.display
        cause = self._scrub(f"{type(exc).__name__}: {exc}")
        if cause.startswith("MasterNotFoundError"):  # redis-py lists every sentinel connection
            kinds = re.findall(r" - (\w+:\w+)", cause)
            why = f"sentinel errors: {', '.join(kinds)}" if kinds else "the sentinels know no healthy master"
            cause = f"MasterNotFoundError: no sentinel named a master for '{self.config.sentinel_master}' ({why})"
        if len(cause) > _MAX_CAUSE:  # e.g. "no master found" lists every sentinel connection
            cause = cause[:_MAX_CAUSE] + " ..."
        if kind == _AUTH:
            user = f" as user '{self.config.username}'" if self.config.username else ""
            sentinel = (
                f", and 'sentinel_password' or {SENTINEL_PASSWORD_ENV} for the sentinels"
                if self.config.sentinel_master
                else ""
            )
            return RendezvousConnectionError(
                f"Authentication to Redis at {where}{user} failed during {what} ({cause}); check the "
                f"'username'/'password' configuration or {PASSWORD_ENV}{sentinel}."
            )
        if kind == _WRONG_TYPE:
            return RendezvousStateError(
                f"The rendezvous data in Redis at {where} is corrupt: {what} found a key of the wrong type ({cause})."
            )
        if kind == _OTHER:
            if type(exc).__name__ in ("MovedError", "AskError") and not self.config.cluster:
                cause += (
                    " (a Redis Cluster node that does not serve this run's hash slot: set the configuration option"
                    " 'cluster=true' to follow cluster redirects)"
                )
            return RendezvousConnectionError(f"Redis at {where} refused {what}: {cause}")
        return RendezvousConnectionError(
            f"Redis at {where} is unreachable: {what} failed after {attempts} attempt(s) in {elapsed:.2f} s: {cause}"
        )

    def _scrub(self, text: str) -> str:
        """Remove the passwords from ``text`` (defence in depth: redis-py does not echo them)."""
        return scrub(text, (self.config.password, self.config.sentinel_password))


class _ClusterScript:
    """A Lua script on Redis Cluster, called like redis-py's ``Script``: ``EVALSHA`` routed by
    its keys' slot; when that master lacks it (``NOSCRIPT``: first use, a promoted replica,
    a migrated slot), ``EVAL`` of the source on the same slot, which also caches it there.
    redis-py's own ``Script`` would ``SCRIPT LOAD`` on every master instead, so each node
    would open a connection to every master.

    Args:
        cluster: The ``RedisCluster``.
        source: The script's text.
    """

    def __init__(self, cluster: Any, source: str) -> None:
        import hashlib

        self._cluster = cluster
        self.script = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    def __call__(self, keys: Any = None, args: Any = None, client: Any = None) -> Any:
        from redis.exceptions import NoScriptError

        keys, args = list(keys or ()), list(args or ())
        try:
            return self._cluster.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            return self._cluster.eval(self.script, len(keys), *keys, *args)


def _as_is(response: Any) -> Any:
    """The pub/sub push handler: hand the message on unchanged."""
    return response


@functools.cache
def _no_lib_info() -> dict[str, Any]:
    """Pool keywords that turn off redis-py's ``CLIENT SETINFO LIB-NAME/LIB-VER`` on connect.

    redis-py sends both on every new connection (two round trips more, after ``HELLO`` and
    ``CLIENT SETNAME rdzv``), and before that reads its own version from the installed
    package metadata (a scan of ``sys.path`` per connection). ``CLIENT SETNAME rdzv`` already
    names the client in ``CLIENT LIST``. A redis-py that has ``redis.driver_info`` takes
    ``driver_info=None``; older ones take ``lib_name=None, lib_version=None``.
    """
    try:
        import redis.driver_info  # noqa: F401
    except ImportError:
        return {"lib_name": None, "lib_version": None}
    return {"driver_info": None}


def _no_retry() -> Any:
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return Retry(NoBackoff(), 0)


@functools.lru_cache(maxsize=1)
def _blocking_sentinel_pool() -> type:
    """A sentinel-managed connection pool that, like ``BlockingConnectionPool``, waits (up to
    its ``timeout``) for a free connection instead of failing when all are in use."""
    from redis import BlockingConnectionPool
    from redis.sentinel import SentinelConnectionPool

    class BlockingSentinelConnectionPool(SentinelConnectionPool, BlockingConnectionPool):  # type: ignore[misc]
        pass

    return BlockingSentinelConnectionPool
