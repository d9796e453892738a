"""Entry points of the ``rdzv.backends`` group: ``etcd-v2`` and ``etcd-v3``.

Each factory takes no argument and returns the handler creator ``params -> handler``, the
shape torch's ``torchrun.handlers`` group uses too. The creator builds the backend and store
with :func:`rdzv_etcd.backend.create_backend` and the handler with
``rdzv_core.dynamic.create_handler``. Nothing is imported from etcd client libraries until a
handler is created.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rdzv_core.api import RendezvousHandler, RendezvousParameters
    from rdzv_etcd.backend import Api

__all__ = ["v2_handler_creator", "v3_handler_creator"]

HandlerCreator = Callable[["RendezvousParameters"], "RendezvousHandler"]


def _handler_creator(api: Api) -> HandlerCreator:
    def create_handler(params: RendezvousParameters) -> RendezvousHandler:
        """Create the dynamic rendezvous handler of ``params`` on etcd (``api``).

        Raises:
            ValueError: bad endpoint/config (names the key). ImportError: client missing.
            RendezvousConnectionError: etcd unreachable (names the endpoint and cause).
        """
        from rdzv_core.dynamic import create_handler as create_dynamic_handler
        from rdzv_etcd.backend import create_backend

        backend, store = create_backend(params, api=api)
        try:
            return create_dynamic_handler(store, backend, params)
        except BaseException:
            backend.close()
            raise

    create_handler.__qualname__ = f"etcd_{api}_handler_creator"
    return create_handler


def v2_handler_creator() -> HandlerCreator:
    """Return the creator of ``etcd-v2`` handlers (etcd's v2 API; needs ``--enable-v2``)."""
    return _handler_creator("v2")


def v3_handler_creator() -> HandlerCreator:
    """Return the creator of ``etcd-v3`` handlers (etcd's v3 API through the JSON gateway)."""
    return _handler_creator("v3")
