"""Use rdzv from ``torchrun``: rdzv handlers and stores as torch's rendezvous types.

This is the only module of rdzv that imports torch (``pip install 'rdzv[redis,torch]'``).
torch (>= 2.4) loads out-of-tree rendezvous handlers from the entry-point group
``torchrun.handlers``: a zero-argument factory returning the creator ``torch
RendezvousParameters -> torch RendezvousHandler``. Each rdzv plug-in declares its own there,
from its :class:`~rdzv_core.plugin.BackendPlugin` (``redis =
"rdzv_redis.plugin:PLUGIN.torch_handler_creator"``, which calls :func:`handler_creator`), so
that ``torchrun --rdzv-backend=redis --rdzv-endpoint=HOST:PORT --rdzv-id=JOB ...`` runs on
rdzv. Loading it imports neither redis nor etcd: a missing client library is reported when a
handler is created, with the extra to install.

What the bridge does
--------------------

* :func:`to_rdzv_parameters` converts torch's ``RendezvousParameters`` (``backend``,
  ``endpoint``, ``run_id``, ``min_nodes``, ``max_nodes``, ``local_addr`` and the
  ``--rdzv-conf`` keys) into :class:`rdzv_core.api.RendezvousParameters`. Every
  ``--rdzv-conf`` key passes through unchanged (``password``, ``ssl``, ``join_timeout``,
  ``last_call_timeout``, ``keep_alive_interval``, ...) except ``timeout``: torch's launcher
  always adds it (``--rdzv-timeout``, default 900), torch's own dynamic handler ignores it, and
  so does the bridge; use ``join_timeout``. Note that torch's launcher logs ``rdzv_configs``
  at INFO level (``LOGLEVEL=INFO``), and the endpoint with it: prefer passing secrets through
  the environment (``RDZV_REDIS_PASSWORD``, ``RDZV_ETCD_USERNAME``/``RDZV_ETCD_PASSWORD``)
  over ``--rdzv-conf password=...`` or a password in an endpoint URL.
* :class:`TorchRendezvousHandler` wraps any :class:`rdzv_core.api.RendezvousHandler` as a
  ``torch.distributed.elastic.rendezvous.RendezvousHandler``: it returns torch's
  ``RendezvousInfo`` and raises torch's rendezvous exceptions of the same name
  (``RendezvousClosedError``, ``RendezvousTimeoutError``, ``RendezvousConnectionError``,
  ``RendezvousStateError``, ``RendezvousGracefulExitError``, else ``RendezvousError``),
  chained to rdzv's, because torch's agent tells them apart by class.
* :class:`TorchStore` exposes any :class:`rdzv_core.store.Store` as a real
  ``torch.distributed.Store`` subclass, so the agent, ``torch.distributed.PrefixStore`` and
  C++ consumers (gloo) accept it. Timeouts are ``timedelta``; a timeout of zero means "no
  timeout" as in c10d. A store timeout raises ``torch.distributed.DistStoreError``, an
  unreachable server ``torch.distributed.DistNetworkError`` (what ``TCPStore`` raises).

Bootstrap: ``use_agent_store`` is ``False``
-------------------------------------------

The store of a round lives in Redis or etcd, where workers cannot reach it with a
``TCPStore`` client, so :attr:`TorchRendezvousHandler.use_agent_store` is always ``False``.
In each round the rank-0 node publishes its address (``--local-addr``, default its FQDN) and a
port that was free a moment ago as ``MASTER_ADDR``/``MASTER_PORT`` in the round's store, and
every node reads them back into ``RendezvousInfo.bootstrap_store_info``. torch's
``LocalElasticAgent`` passes them to the workers with ``TORCHELASTIC_USE_AGENT_STORE=False``;
with that, torch's ``env://`` initialisation (``torch.distributed.rendezvous`` ->
``_create_c10d_store``) starts the ``TCPStore`` *server* in the worker of global rank 0 (local
rank 0 of the rank-0 node), at ``MASTER_ADDR:MASTER_PORT``, and every other worker connects to
it as a client. The agents themselves keep using the rdzv store (rank assignment, exit
barrier). A new round publishes a new port, so a restarted worker group never collides with
the socket of the previous one.

Example::

    RDZV_REDIS_PASSWORD=... python -m torch.distributed.run --nnodes=2:4 --nproc-per-node=8 \\
        --rdzv-backend=redis --rdzv-endpoint=redis.example:6379 --rdzv-id=job42 \\
        --rdzv-conf=ssl=true,join_timeout=300,keep_alive_interval=2 train.py
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import torch.distributed as dist
from torch.distributed.elastic.rendezvous import api as torch_api

from rdzv_core import api as rdzv_api
from rdzv_core.store import Store, StoreTimeoutError, to_bytes, to_seconds

__all__ = [
    "TorchStore",
    "TorchRendezvousHandler",
    "to_rdzv_parameters",
    "to_torch_error",
    "to_torch_handler",
    "create_handler",
    "handler_creator",
]

logger = logging.getLogger(__name__)

TorchHandlerCreator = Callable[[torch_api.RendezvousParameters], torch_api.RendezvousHandler]

#: ``--rdzv-conf`` keys the bridge drops (torch's launcher always adds ``timeout``).
DROPPED_CONFIG_KEYS = frozenset({"timeout"})

#: rdzv exception -> torch exception of the same name (looked up along the MRO).
_ERROR_MAP: dict[type[BaseException], type[torch_api.RendezvousError]] = {
    rdzv_api.RendezvousGracefulExitError: torch_api.RendezvousGracefulExitError,
    rdzv_api.RendezvousClosedError: torch_api.RendezvousClosedError,
    rdzv_api.RendezvousTimeoutError: torch_api.RendezvousTimeoutError,
    rdzv_api.RendezvousConnectionError: torch_api.RendezvousConnectionError,
    rdzv_api.RendezvousStateError: torch_api.RendezvousStateError,
    rdzv_api.RendezvousError: torch_api.RendezvousError,
}

#: A wait in chunks of this many seconds stands for c10d's "no timeout" (zero).
_NO_TIMEOUT_CHUNK = 3600.0
#: torch's ``Store.timeout`` property (it reads the C++ store's timeout).
_BASE_TIMEOUT: property = vars(dist.Store)["timeout"]


def to_torch_error(exc: rdzv_api.RendezvousError) -> torch_api.RendezvousError:
    """Return torch's rendezvous exception of the same kind as ``exc``, with its message.

    The caller raises it ``from exc``.
    """
    for cls in type(exc).__mro__:
        target = _ERROR_MAP.get(cls)
        if target is not None:
            return target(str(exc))
    return torch_api.RendezvousError(str(exc))


@contextmanager
def _torch_rendezvous_errors() -> Iterator[None]:
    try:
        yield
    except rdzv_api.RendezvousError as exc:
        raise to_torch_error(exc) from exc


@contextmanager
def _torch_store_errors() -> Iterator[None]:
    try:
        yield
    except rdzv_api.RendezvousConnectionError as exc:
        raise dist.DistNetworkError(str(exc)) from exc
    except StoreTimeoutError as exc:  # torch's own store tests look for the word
        raise dist.DistStoreError(f"Timeout: store wait timeout. {exc}") from exc
    except rdzv_api.RendezvousError as exc:
        raise dist.DistStoreError(str(exc)) from exc


def _as_timedelta(timeout: timedelta | float | int) -> timedelta:
    return timedelta(seconds=to_seconds(timeout))


# --------------------------------------------------------------------------------------------
# The store


class TorchStore(dist.Store):
    """A ``torch.distributed.Store`` that forwards to an rdzv :class:`~rdzv_core.store.Store`.

    It is a real subclass of torch's pybind ``Store``: Python code calls its methods directly,
    and C++ code (``PrefixStore``, process groups) reaches them through torch's trampoline,
    which calls ``set``, ``get``, ``add``, ``compare_set``, ``wait``, ``check``,
    ``deleteKey``, ``getNumKeys``, ``multi_get``, ``multi_set``, ``append``, ``clone`` and
    ``has_extended_api`` (the C++ names of ``delete_key``/``num_keys`` are aliases here).

    The timeout of blocking calls is torch's own (``timeout`` / ``set_timeout``), one per
    :class:`TorchStore` object, initially the rdzv store's; zero means "no timeout".

    Keep a Python reference to it for as long as C++ objects built on it (a ``PrefixStore``,
    a process group) are in use: torch's trampoline finds the methods through the Python
    object, and a collected one leaves C++ with "Not implemented" errors.

    Args:
        store: The rdzv store (not closed by this object).
        timeout: The initial timeout (``timedelta`` or seconds); ``None`` takes the store's.

    Raises (from the methods):
        torch.distributed.DistStoreError: a key did not appear in time (or another store error).
        torch.distributed.DistNetworkError: the store's server cannot be reached.
    """

    def __init__(self, store: Store, timeout: timedelta | float | None = None) -> None:
        super().__init__()
        if not isinstance(store, Store):
            raise TypeError(f"TorchStore wraps an rdzv_core.store.Store, not {type(store).__name__}.")
        self._store = store
        dist.Store.set_timeout(self, _as_timedelta(store.timeout if timeout is None else timeout))

    def __repr__(self) -> str:
        return f"TorchStore({self._store!r}, timeout={self.timeout})"

    @property
    def rdzv_store(self) -> Store:
        """The wrapped rdzv store."""
        return self._store

    @property
    def timeout(self) -> timedelta:
        """The default timeout of blocking calls (torch's own, also seen by C++ callers)."""
        value: timedelta = _BASE_TIMEOUT.fget(self)  # type: ignore[misc]
        return value

    def set_timeout(self, timeout: timedelta | float) -> None:  # type: ignore[override]
        """Set the default timeout of ``get``/``wait``/``multi_get`` (``timedelta`` or seconds)."""
        dist.Store.set_timeout(self, _as_timedelta(timeout))

    # -- blocking helpers -------------------------------------------------------------------

    def _wait(self, keys: list[str], timeout: timedelta | float | None) -> None:
        seconds = to_seconds(self.timeout if timeout is None else timeout)
        if seconds > 0:
            self._store.wait(keys, seconds)
            return
        while True:  # c10d's kNoTimeout
            try:
                self._store.wait(keys, _NO_TIMEOUT_CHUNK)
                return
            except StoreTimeoutError:
                continue

    def _default_timeout_matches(self) -> bool:
        return self.timeout == self._store.timeout and self.timeout > timedelta(0)

    # -- the c10d API -----------------------------------------------------------------------

    def set(self, key: str, value: bytes | str) -> None:  # type: ignore[override]
        with _torch_store_errors():
            self._store.set(key, to_bytes(value))

    def get(self, key: str) -> bytes:
        with _torch_store_errors():
            if not self._default_timeout_matches():
                self._wait([key], None)
            return self._store.get(key)

    def add(self, key: str, value: int) -> int:
        with _torch_store_errors():
            return int(self._store.add(key, int(value)))

    def compare_set(self, key: str, expected_value: bytes | str, desired_value: bytes | str) -> bytes:  # type: ignore[override]
        with _torch_store_errors():
            return self._store.compare_set(key, to_bytes(expected_value), to_bytes(desired_value))

    def wait(self, keys: Sequence[str], timeout: timedelta | None = None) -> None:  # type: ignore[override]
        with _torch_store_errors():
            self._wait(list(keys), timeout)

    def check(self, keys: Sequence[str]) -> bool:  # type: ignore[override]
        with _torch_store_errors():
            return bool(self._store.check(list(keys)))

    def delete_key(self, key: str) -> bool:
        with _torch_store_errors():
            return bool(self._store.delete_key(key))

    def num_keys(self) -> int:
        with _torch_store_errors():
            return int(self._store.num_keys())

    def multi_get(self, keys: Sequence[str]) -> list[bytes]:  # type: ignore[override]
        keys = list(keys)
        with _torch_store_errors():
            if not self._default_timeout_matches():
                self._wait(keys, None)
            return list(self._store.multi_get(keys))

    def multi_set(self, keys: Sequence[str], values: Sequence[bytes | str]) -> None:  # type: ignore[override]
        with _torch_store_errors():
            self._store.multi_set(list(keys), [to_bytes(v) for v in values])

    def append(self, key: str, value: bytes | str) -> None:  # type: ignore[override]
        with _torch_store_errors():
            self._store.append(key, to_bytes(value))

    def has_extended_api(self) -> bool:
        """``True``: ``append``, ``multi_get`` and ``multi_set`` are implemented."""
        return True

    def clone(self) -> TorchStore:
        """Return this object: rdzv stores are thread-safe, so it may be used concurrently.

        (A new Python object handed only to C++ would be collected while C++ still holds it,
        and torch's trampoline would then find no Python methods.)
        """
        return self

    # The names torch's C++ trampoline looks up for these two.
    deleteKey = delete_key  # noqa: N815
    getNumKeys = num_keys  # noqa: N815


# --------------------------------------------------------------------------------------------
# The handler


class TorchRendezvousHandler(torch_api.RendezvousHandler):
    """A torch ``RendezvousHandler`` over an rdzv :class:`~rdzv_core.api.RendezvousHandler`.

    Every method forwards to the rdzv handler; rdzv's rendezvous exceptions come out as
    torch's of the same name (chained). ``use_agent_store`` is always ``False`` (see the module
    docstring).

    Args:
        handler: The rdzv handler (owned: :meth:`shutdown` shuts it down).
    """

    def __init__(self, handler: rdzv_api.RendezvousHandler) -> None:
        if not isinstance(handler, rdzv_api.RendezvousHandler):
            raise TypeError(
                f"TorchRendezvousHandler wraps an rdzv_core.api.RendezvousHandler, not {type(handler).__name__}."
            )
        self._handler = handler

    def __repr__(self) -> str:
        return f"TorchRendezvousHandler({self._handler!r})"

    @property
    def rdzv_handler(self) -> rdzv_api.RendezvousHandler:
        """The wrapped rdzv handler."""
        return self._handler

    def get_backend(self) -> str:
        return self._handler.get_backend()

    def get_run_id(self) -> str:
        return self._handler.get_run_id()

    @property
    def use_agent_store(self) -> bool:
        """``False``: workers bootstrap from ``MASTER_ADDR``/``MASTER_PORT``, where the worker of
        global rank 0 hosts a ``TCPStore``; the rdzv store is not reachable by a TCPStore client."""
        return False

    def next_rendezvous(self) -> torch_api.RendezvousInfo:
        """Join the next round; return torch's ``RendezvousInfo`` with a :class:`TorchStore`.

        Raises:
            torch's RendezvousClosedError, RendezvousGracefulExitError, RendezvousTimeoutError,
            RendezvousConnectionError, RendezvousStateError (chained to rdzv's).
        """
        with _torch_rendezvous_errors():
            info = self._handler.next_rendezvous()
        bootstrap = info.bootstrap_store_info
        return torch_api.RendezvousInfo(
            TorchStore(info.store),
            info.rank,
            info.world_size,
            torch_api.RendezvousStoreInfo(master_addr=bootstrap.master_addr, master_port=int(bootstrap.master_port)),
        )

    def is_closed(self) -> bool:
        with _torch_rendezvous_errors():
            return bool(self._handler.is_closed())

    def set_closed(self) -> None:
        with _torch_rendezvous_errors():
            self._handler.set_closed()

    def num_nodes_waiting(self) -> int:
        with _torch_rendezvous_errors():
            return int(self._handler.num_nodes_waiting())

    def shutdown(self) -> bool:
        with _torch_rendezvous_errors():
            return bool(self._handler.shutdown())


def to_torch_handler(handler: rdzv_api.RendezvousHandler) -> TorchRendezvousHandler:
    """Wrap an rdzv handler as a torch handler (see :class:`TorchRendezvousHandler`)."""
    return TorchRendezvousHandler(handler)


# --------------------------------------------------------------------------------------------
# Parameters and creators


def to_rdzv_parameters(
    params: torch_api.RendezvousParameters, keep: frozenset[str] = frozenset()
) -> rdzv_api.RendezvousParameters:
    """Convert torch's ``RendezvousParameters`` into rdzv's.

    ``backend``, ``endpoint``, ``run_id``, ``min_nodes``, ``max_nodes`` and ``local_addr`` are
    copied; the configuration (``--rdzv-conf``) passes through except the keys in
    :data:`DROPPED_CONFIG_KEYS` that are not in ``keep`` (a plug-in with a handler of its own
    that reads ``timeout``, as torch's ``etcd`` handler does, keeps it).

    Raises:
        ValueError: rdzv refuses a value (empty run id, bad bounds); the message names it.
    """
    dropped = DROPPED_CONFIG_KEYS - keep
    config: dict[str, Any] = {k: v for k, v in params.config.items() if k not in dropped}
    return rdzv_api.RendezvousParameters(
        backend=params.backend,
        endpoint=params.endpoint,
        run_id=params.run_id,
        min_nodes=params.min_nodes,
        max_nodes=params.max_nodes,
        local_addr=params.local_addr,
        **config,
    )


def create_handler(params: torch_api.RendezvousParameters) -> TorchRendezvousHandler:
    """Create the rdzv handler of ``params.backend`` (rdzv's registry, entry-point group
    ``rdzv.backends``) and wrap it for torch.

    Raises:
        ValueError: bad parameters, or no rdzv plug-in of that name (the message says which
            extra to install).
        ImportError: the plug-in is installed but its client library is missing.
        torch's RendezvousConnectionError: the backend cannot be reached (chained).
    """
    from rdzv_core.registry import get_rendezvous_handler, rendezvous_handler_registry

    plugin = rendezvous_handler_registry.plugin(params.backend)
    keep = plugin.config_keys if plugin is not None and plugin.handler_factory is not None else frozenset()
    rdzv_params = to_rdzv_parameters(params, keep)
    started = time.monotonic()
    with _torch_rendezvous_errors():
        handler = get_rendezvous_handler(rdzv_params)
    logger.debug("Created the rdzv handler %r for torch in %.3f s", handler, time.monotonic() - started)
    return TorchRendezvousHandler(handler)


def handler_creator(backend: str) -> TorchHandlerCreator:
    """Return a torch handler creator bound to the rdzv backend ``backend``.

    The creator refuses parameters of another backend name (``ValueError``), so an entry point
    cannot be registered under a name it does not serve.
    """

    def create(params: torch_api.RendezvousParameters) -> torch_api.RendezvousHandler:
        if params.backend != backend:
            raise ValueError(f"This creator makes '{backend}' rendezvous handlers, not '{params.backend}'.")
        return create_handler(params)

    create.__name__ = create.__qualname__ = f"create_{backend.replace('-', '_')}_handler"
    create.__doc__ = f"Create a torch handler on rdzv's '{backend}' backend from torch's RendezvousParameters."
    return create
