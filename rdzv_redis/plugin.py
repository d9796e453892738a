"""Entry point of the Redis plug-in (``rdzv.backends``: ``redis = rdzv_redis.plugin:handler_creator``).

``handler_creator()`` is the zero-argument factory the registry calls; it returns the creator
``params -> RendezvousHandler`` that builds a :class:`~rdzv_redis.backend.RedisRendezvousBackend`
and a :class:`~rdzv_redis.store.RedisStore` and hands them to the dynamic handler.
"""

from __future__ import annotations

from collections.abc import Callable

from rdzv_core.api import RendezvousHandler, RendezvousParameters
from rdzv_redis.backend import create_backend

__all__ = ["create_backend", "create_handler", "handler_creator"]


def create_handler(params: RendezvousParameters) -> RendezvousHandler:
    """Create a dynamic rendezvous handler on Redis for ``params``.

    Args:
        params: ``endpoint`` is ``host[:port]`` or a ``redis://``/``rediss://`` URL; the
            configuration takes the Redis keys (see :class:`rdzv_redis.client.RedisConfig`)
            and the handler's keys (``rdzv_core.dynamic.HANDLER_CONFIG_KEYS``).

    Raises:
        ValueError: bad endpoint or configuration (names the key).
        RendezvousConnectionError: Redis unreachable or authentication failed.
        ImportError: redis-py is missing (``pip install 'rdzv[redis]'``).
    """
    from rdzv_core.dynamic import create_handler as create_dynamic_handler

    backend, store = create_backend(params)
    try:
        return create_dynamic_handler(store, backend, params)
    except BaseException:
        store.close()
        backend.close()
        raise


def handler_creator() -> Callable[[RendezvousParameters], RendezvousHandler]:
    """Return the handler creator of the ``redis`` backend (no argument; for entry points)."""
    return create_handler
