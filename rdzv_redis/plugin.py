"""The Redis plug-in: one :class:`~rdzv_core.plugin.BackendPlugin`, :data:`PLUGIN`.

Entry points: ``rdzv.backends: redis = "rdzv_redis.plugin:PLUGIN"`` and
``torchrun.handlers: redis = "rdzv_redis.plugin:PLUGIN.torch_handler_creator"``. Loading it
imports neither redis-py nor torch: a missing client library is reported when a backend is
created, with the extra to install.
"""

from __future__ import annotations

from typing import Any

from rdzv_core.plugin import BackendPlugin
from rdzv_redis.backend import create_backend
from rdzv_redis.client import REDIS_CONFIG_KEYS

__all__ = ["PLUGIN"]


def _local_server(port: int | None) -> Any:
    """A throw-away ``redis-server`` on 127.0.0.1 (``port``: ``None`` = a free one)."""
    from rdzv_redis.server import RedisServer

    return RedisServer(port=port)


#: The ``redis`` backend: :func:`rdzv_redis.backend.create_backend`, the Redis keys of
#: :class:`rdzv_redis.client.RedisConfig`, ``rdzv server redis``.
PLUGIN = BackendPlugin(
    "redis", create_backend, REDIS_CONFIG_KEYS, extra="rdzv[redis]", server_kind="redis", local_server=_local_server,
    secret_keys=frozenset({"password", "sentinel_password"}),
)  # fmt: skip
