"""Backend registry: names -> handler creators, with plug-ins found through entry points.

A plug-in names, in the entry-point group ``rdzv.backends``, its
:class:`~rdzv_core.plugin.BackendPlugin` object; core builds the handler, ``rdzv status``,
``rdzv server`` and the install hints from it. An entry point may also name a zero-argument
factory that returns a bare creator ``params -> RendezvousHandler`` (the shape of torch's
``torchrun.handlers`` group): such a backend gets handlers only. Plug-ins are loaded lazily,
once, on the first lookup; one that fails to import does not break the others, and asking
for it raises an error that carries the import failure.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from importlib.metadata import entry_points

from rdzv_core.api import RendezvousHandler, RendezvousParameters
from rdzv_core.plugin import BackendPlugin

__all__ = [
    "ENTRY_POINT_GROUP",
    "HandlerCreator",
    "RendezvousHandlerRegistry",
    "rendezvous_handler_registry",
    "get_rendezvous_handler",
]

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "rdzv.backends"

HandlerCreator = Callable[[RendezvousParameters], RendezvousHandler]


class RendezvousHandlerRegistry:
    """Maps backend names to handler creators.

    Args:
        entry_point_group: Group to discover plug-ins from, or ``None`` for none.
    """

    def __init__(self, entry_point_group: str | None = ENTRY_POINT_GROUP) -> None:
        self._creators: dict[str, HandlerCreator] = {}
        self._plugins: dict[str, BackendPlugin] = {}
        self._load_errors: dict[str, BaseException] = {}
        self._group = entry_point_group
        self._discovered = entry_point_group is None
        self._lock = threading.RLock()

    def register(self, backend: str, creator: HandlerCreator) -> None:
        """Register ``creator`` under ``backend``.

        Registering the same creator again is a no-op.

        Raises:
            ValueError: ``backend`` is empty, or already taken by a different creator.
        """
        if not backend:
            raise ValueError("The rendezvous backend name must be a non-empty string.")
        with self._lock:
            current = self._creators.get(backend)
            if current is not None and current != creator:  # == : the same bound method too
                raise ValueError(
                    f"The rendezvous backend '{backend}' cannot be registered with '{creator}' as it is already registered with '{current}'."
                )
            self._creators[backend] = creator
            self._load_errors.pop(backend, None)

    def register_plugin(self, plugin: BackendPlugin) -> None:
        """Register ``plugin`` under its name (its handlers, and what ``plugin()`` answers).

        Raises:
            ValueError: the name is taken by another creator.
        """
        with self._lock:
            self.register(plugin.name, plugin.create_handler)
            self._plugins[plugin.name] = plugin

    def plugin(self, backend: str) -> BackendPlugin | None:
        """The :class:`~rdzv_core.plugin.BackendPlugin` of ``backend``, or ``None`` (unknown, or
        registered as a bare handler creator)."""
        self._discover()
        with self._lock:
            return self._plugins.get(backend)

    def plugins(self) -> list[BackendPlugin]:
        """Every registered :class:`~rdzv_core.plugin.BackendPlugin`, sorted by name."""
        self._discover()
        with self._lock:
            return [self._plugins[name] for name in sorted(self._plugins)]

    def backends(self) -> list[str]:
        """Return the names of the backends that can be created, sorted."""
        self._discover()
        return sorted(self._creators)

    def create_handler(self, params: RendezvousParameters) -> RendezvousHandler:
        """Create the handler of ``params.backend``.

        Raises:
            ValueError: no such backend is installed (the message lists the installed ones and
                the extra to ``pip install``).
            ImportError: the plug-in is installed but failed to load; chained to the cause.
            RuntimeError: the handler reports another backend name (as torch's registry).
        """
        creator = self._creator(params.backend)
        handler = creator(params)
        if handler.get_backend() != params.backend:
            raise RuntimeError(
                f"The rendezvous backend '{handler.get_backend()}' does not match the requested backend '{params.backend}'."
            )
        return handler

    def _creator(self, backend: str) -> HandlerCreator:
        self._discover()
        with self._lock:
            creator = self._creators.get(backend)
            error = self._load_errors.get(backend)
        if creator is not None:
            return creator
        if error is not None:
            raise ImportError(
                f"The rendezvous backend '{backend}' is installed but failed to load: {error!r}."
            ) from error
        raise ValueError(
            f"The rendezvous backend '{backend}' is not registered. Installed backends: {', '.join(self.backends()) or 'none'}. "
            f"Others come from plug-ins in the '{ENTRY_POINT_GROUP}' entry-point group."
        )

    def _discover(self) -> None:
        with self._lock:
            if self._discovered:
                return
            self._discovered = True
            for entry_point in entry_points(group=self._group or ""):
                if entry_point.name in self._creators:
                    continue
                try:
                    self._load(entry_point.name, entry_point.load())
                except Exception as exc:  # a broken plug-in must not break the others
                    logger.debug("Rendezvous plug-in %r failed to load", entry_point.name, exc_info=True)
                    self._load_errors[entry_point.name] = exc

    def _load(self, name: str, loaded: object) -> None:
        """Register what the entry point ``name`` named: a plug-in, or a creator factory."""
        if not isinstance(loaded, BackendPlugin):
            if not callable(loaded):
                raise TypeError(
                    f"The '{ENTRY_POINT_GROUP}' entry point '{name}' names neither a BackendPlugin nor a factory (got {type(loaded).__name__})."
                )
            loaded = loaded()
        if isinstance(loaded, BackendPlugin):
            if loaded.name != name:
                raise ValueError(
                    f"The '{ENTRY_POINT_GROUP}' entry point '{name}' names the plug-in of backend '{loaded.name}'."
                )
            self.register_plugin(loaded)  # discovery skips names already registered
        elif callable(loaded):
            self._creators[name] = loaded
        else:
            raise TypeError(
                f"The factory of the '{ENTRY_POINT_GROUP}' entry point '{name}' returned {type(loaded).__name__}, not a handler creator."
            )


#: The default registry, fed by the ``rdzv.backends`` entry points.
rendezvous_handler_registry = RendezvousHandlerRegistry()


def get_rendezvous_handler(params: RendezvousParameters) -> RendezvousHandler:
    """Create the handler for ``params`` from the default registry (see ``create_handler``)."""
    return rendezvous_handler_registry.create_handler(params)
