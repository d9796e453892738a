"""The ``memory`` backend: rendezvous between handlers of one process (tests, single host).

All handlers of a run id in this process share one :class:`~rdzv_core.store.HashStore`.
"""

from __future__ import annotations

import threading

from rdzv_core.api import RendezvousHandler, RendezvousParameters
from rdzv_core.registry import HandlerCreator
from rdzv_core.store import HashStore
from rdzv_core.store_backend import StoreRendezvousBackend
from rdzv_core.utils import warn_unknown_config

__all__ = ["handler_creator", "shared_store"]

_stores: dict[str, HashStore] = {}
_lock = threading.Lock()


def shared_store(run_id: str) -> HashStore:
    """Return this process's store of ``run_id`` (created on first use)."""
    with _lock:
        return _stores.setdefault(run_id, HashStore())


def create_handler(params: RendezvousParameters) -> RendezvousHandler:
    """Create a handler of backend ``memory`` (``params.endpoint`` is ignored)."""
    from rdzv_core.dynamic import HANDLER_CONFIG_KEYS
    from rdzv_core.dynamic import create_handler as create

    warn_unknown_config(params.config, HANDLER_CONFIG_KEYS, "memory")
    store = shared_store(params.run_id)
    return create(store, StoreRendezvousBackend(store, params.run_id, name="memory"), params)


def handler_creator() -> HandlerCreator:
    """Entry point of ``rdzv.backends``: return the creator of ``memory`` handlers."""
    return create_handler
