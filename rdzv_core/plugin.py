"""The plug-in contract: one :class:`BackendPlugin` object per backend.

A backend package becomes a complete plug-in by exposing one ``BackendPlugin`` and naming it
in two entry-point groups::

    [project.entry-points."rdzv.backends"]
    mybackend = "mypkg.plugin:PLUGIN"

    [project.entry-points."torchrun.handlers"]            # optional: torchrun --rdzv-backend
    mybackend = "mypkg.plugin:PLUGIN.torch_handler_creator"

From that object core builds everything else, without naming the backend anywhere: the
handler (as torch's registry does from ``create_backend(params) -> (backend, store)``), the
warning about unknown configuration keys, ``rdzv status`` and ``rdzv close`` (which open the
backend without joining), ``rdzv server <kind>`` (when the plug-in has a local server), the
install hint of an error, and the torchrun handler creator. A plug-in whose protocol is not
the dynamic rendezvous (torch's legacy etcd handler, say) gives ``handler_factory`` instead
of (or besides) ``create_backend``: core then creates its handlers with it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from rdzv_core.utils import warn_unknown_config

if TYPE_CHECKING:
    from rdzv_core.api import RendezvousHandler, RendezvousParameters
    from rdzv_core.backend import RendezvousBackend
    from rdzv_core.store import Store

__all__ = [
    "BackendPlugin",
    "BackendFactory",
    "HandlerFactory",
    "LocalServer",
    "ServerFactory",
    "SECRET_WORDS",
    "without_secrets",
]

#: A configuration key whose name contains one of these holds a secret.
SECRET_WORDS = ("password", "secret", "token")

#: ``params -> (backend, store)``: connects; the store is the run's (unscoped) store.
BackendFactory = Callable[["RendezvousParameters"], "tuple[RendezvousBackend, Store]"]

#: ``params -> RendezvousHandler``: a plug-in's own handler, for a protocol that is not the
#: dynamic rendezvous (connects; raises as :meth:`BackendPlugin.create_handler`).
HandlerFactory = Callable[["RendezvousParameters"], "RendezvousHandler"]


@runtime_checkable
class LocalServer(Protocol):
    """A throw-away server on 127.0.0.1 that a plug-in can start (``rdzv server``,
    ``rdzv run --standalone``, tests and benchmarks)."""

    @property
    def endpoint(self) -> str:
        """``host:port`` for ``--rdzv-endpoint`` (str)."""
        ...

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        ...

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs, else ``None``."""
        ...

    def start(self) -> Any:
        """Start it and wait until it serves (raises ``RuntimeError``/``OSError`` when it
        does not, ``FileNotFoundError`` when its binary is missing)."""
        ...

    def stop(self) -> None:
        """Stop it and remove what it kept (idempotent)."""
        ...

    def kill(self) -> None:
        """SIGKILL it, as a crash, without cleaning up (fault injection)."""
        ...

    def restart(self, *, keep_data: bool) -> None:
        """Stop it and start it again on the same port, with its data or empty (a server
        that lost its data)."""
        ...


#: ``port -> server`` (``None``: a free port): a :class:`LocalServer`, created, not started.
ServerFactory = Callable[[int | None], LocalServer]


@dataclass(frozen=True)
class BackendPlugin:
    """What core knows of one backend.

    Attributes:
        name: The backend name (str, non-empty), as in ``--rdzv-backend``.
        create_backend: ``params -> (backend, store)`` or ``None`` (then ``handler_factory``
            is required, and ``rdzv status``/``close`` and ``open_worker_store`` refuse the
            backend with a ``ValueError``): the
            :class:`~rdzv_core.backend.RendezvousBackend` and the run's
            :class:`~rdzv_core.store.Store`, connected. May raise ``ValueError`` (bad
            endpoint or configuration, naming the key), ``ImportError`` (its client library
            is missing) or :class:`~rdzv_core.api.RendezvousConnectionError`.
        config_keys: The backend's own configuration keys (frozenset of str); the handler's
            (``rdzv_core.dynamic.HANDLER_CONFIG_KEYS``) are added by core. Other keys are
            logged as unknown (one WARNING) and ignored.
        extra: The pip requirement that installs what the backend needs (``"rdzv[redis]"``),
            quoted by install hints.
        server_kind: The ``KIND`` of ``rdzv server KIND`` that starts a local server for this
            backend (several backends may share one), or ``None``.
        local_server: ``port -> LocalServer`` for ``rdzv server`` (``port`` int or ``None``;
            ``ValueError`` when it cannot take a fixed port), or ``None``.
        local_cluster: ``port -> LocalServer`` for ``rdzv server KIND --cluster``: a local
            cluster of several servers (``port``: the first node's), whose ``endpoint`` lists
            them all; it may have a ``rdzv_conf`` attribute (dict of str) with the
            configuration a rendezvous on it needs. ``None``: the plug-in has none.
        torch: Whether the backend is offered to torchrun (see
            :meth:`torch_handler_creator`).
        cross_process: Whether other processes reach the same backend and store (``False``:
            one process only, so no worker of ``rdzv run`` can open the round's store).
        secret_keys: Configuration keys that hold secrets (frozenset of str): never passed
            to a worker (nor is any key whose name contains ``password``, ``secret`` or
            ``token``).
        handler_factory: ``params -> RendezvousHandler`` of a plug-in whose protocol is not
            the dynamic rendezvous (``None``: core builds the dynamic handler from
            ``create_backend``). Its configuration keys are ``config_keys`` alone (the
            dynamic handler's are not added), and the torchrun bridge passes it every
            ``config_keys`` key, also those it drops for the dynamic handler (``timeout``).

    Raises:
        ValueError: ``name`` is empty, ``server_kind`` and ``local_server`` are not given
            together, or neither ``create_backend`` nor ``handler_factory`` is given.
    """

    name: str
    create_backend: BackendFactory | None
    config_keys: frozenset[str] = frozenset()
    extra: str = "rdzv"
    server_kind: str | None = None
    local_server: ServerFactory | None = None
    torch: bool = True
    cross_process: bool = True
    secret_keys: frozenset[str] = frozenset()
    local_cluster: ServerFactory | None = None
    handler_factory: HandlerFactory | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"A backend plug-in needs a non-empty name (got {self.name!r}).")
        if (self.server_kind is None) != (self.local_server is None):
            raise ValueError(
                f"The backend plug-in '{self.name}' must give both server_kind and local_server, or neither."
            )
        if self.create_backend is None and self.handler_factory is None:
            raise ValueError(f"The backend plug-in '{self.name}' needs create_backend or handler_factory.")

    @property
    def handler_config_keys(self) -> frozenset[str]:
        """Every configuration key a handler of this backend reads: ``config_keys``, plus the
        dynamic handler's (``rdzv_core.dynamic.HANDLER_CONFIG_KEYS``) without ``handler_factory``."""
        if self.handler_factory is not None:
            return self.config_keys
        from rdzv_core.dynamic import HANDLER_CONFIG_KEYS

        return self.config_keys | HANDLER_CONFIG_KEYS

    @property
    def install_hint(self) -> str:
        """``"Install it with: pip install '<extra>'"``."""
        return f"Install it with: pip install '{self.extra}'"

    def open(self, params: RendezvousParameters) -> tuple[RendezvousBackend, Store]:
        """Warn about unknown configuration keys, then ``create_backend(params)`` (connects;
        its errors propagate, an ``ImportError`` with :attr:`install_hint` added when its
        message lacks it).

        Raises:
            ValueError: the plug-in has no ``create_backend`` (its own handler only).
        """
        create_backend = self.create_backend
        if create_backend is None:
            raise ValueError(
                f"The rendezvous backend '{self.name}' has a handler of its own and no dynamic-rendezvous backend to open (status, close and worker stores need one)."
            )
        warn_unknown_config(params.config, self.handler_config_keys, self.name)
        return self._with_install_hint(create_backend, params)

    def _with_install_hint(self, factory: Callable[[RendezvousParameters], Any], params: RendezvousParameters) -> Any:
        try:
            return factory(params)
        except ImportError as exc:
            if self.extra in str(exc):
                raise
            raise ImportError(
                f"The rendezvous backend '{self.name}' cannot load its client library ({exc}). {self.install_hint}"
            ) from exc

    def create_handler(self, params: RendezvousParameters) -> RendezvousHandler:
        """The handler of ``params``: ``handler_factory(params)`` when the plug-in has one, else
        the dynamic rendezvous handler on this backend (the backend and store are closed again
        when the handler cannot be built).

        Raises:
            ValueError: bad endpoint, configuration or bounds (names the value).
            ImportError: the backend's client library is missing.
            RendezvousConnectionError: the backend is unreachable.
        """
        if self.handler_factory is not None:
            warn_unknown_config(params.config, self.config_keys, self.name)
            return self._with_install_hint(self.handler_factory, params)  # type: ignore[no-any-return]
        from rdzv_core.dynamic import create_handler

        backend, store = self.open(params)
        try:
            return create_handler(store, backend, params)
        except BaseException:
            _close_quietly(store, backend)
            raise

    def without_secrets(self, config: Mapping[str, Any]) -> dict[str, Any]:
        """``config`` without its secret keys (see :attr:`secret_keys`), for a worker."""
        return without_secrets(config, self.secret_keys)

    def torch_handler_creator(self) -> Callable[[Any], Any]:
        """torchrun's ``torchrun.handlers`` factory: takes no argument, returns the creator
        ``torch RendezvousParameters -> torch RendezvousHandler`` (imports torch).

        Raises:
            ValueError: the plug-in has ``torch=False``.
        """
        if not self.torch:
            raise ValueError(f"The rendezvous backend '{self.name}' is not offered to torchrun.")
        from rdzv_core.torch_bridge import handler_creator

        return handler_creator(self.name)


def without_secrets(config: Mapping[str, Any], secret_keys: frozenset[str] = frozenset()) -> dict[str, Any]:
    """``config`` without ``secret_keys`` and without any key whose name contains one of
    :data:`SECRET_WORDS` (a plug-in that is not installed still keeps its password); keys
    ending in ``_file`` name a file and are kept."""
    return {k: v for k, v in config.items() if k not in secret_keys and not _holds_secret(k)}


def _holds_secret(key: str) -> bool:
    """Whether the key's name says it holds a secret; ``*_file`` keys hold a path (e.g.
    ``password_file``), which a worker needs to read the secret itself."""
    name = key.lower()
    return not name.endswith("_file") and any(word in name for word in SECRET_WORDS)


def _close_quietly(*resources: Any) -> None:
    for resource in resources:
        try:
            resource.close()
        except Exception:  # the error that made us close matters more
            pass
