"""rdzv core: the rendezvous API, registry, stores and the dynamic rendezvous handler.

Nothing here imports redis, etcd or torch; plug-ins bring those.
"""

from rdzv_core.api import (
    RendezvousClosedError,
    RendezvousConnectionError,
    RendezvousError,
    RendezvousGracefulExitError,
    RendezvousHandler,
    RendezvousInfo,
    RendezvousParameters,
    RendezvousStateError,
    RendezvousStoreInfo,
    RendezvousTimeoutError,
)
from rdzv_core.backend import ChangeNotifier, LivenessTracker, RendezvousBackend
from rdzv_core.registry import (
    RendezvousHandlerRegistry,
    get_rendezvous_handler,
    rendezvous_handler_registry,
)
from rdzv_core.store import HashStore, PrefixStore, Store, StoreTimeoutError

__version__ = "0.1.0"

__all__ = [
    "ChangeNotifier",
    "HashStore",
    "LivenessTracker",
    "PrefixStore",
    "RendezvousBackend",
    "RendezvousClosedError",
    "RendezvousConnectionError",
    "RendezvousError",
    "RendezvousGracefulExitError",
    "RendezvousHandler",
    "RendezvousHandlerRegistry",
    "RendezvousInfo",
    "RendezvousParameters",
    "RendezvousStateError",
    "RendezvousStoreInfo",
    "RendezvousTimeoutError",
    "Store",
    "StoreTimeoutError",
    "get_rendezvous_handler",
    "rendezvous_handler_registry",
]
