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


def _local_cluster(port: int | None) -> Any:
    """A throw-away Redis Cluster on 127.0.0.1: 3 masters + 3 replicas (``port``: the first
    node's, the others following it; ``None`` = free ports), ``cluster-node-timeout`` 2 s."""
    from rdzv_redis.server import RedisClusterServer

    return RedisClusterServer(port=port, node_timeout=2.0)


#: The ``redis`` backend: :func:`rdzv_redis.backend.create_backend`, the Redis keys of
#: :class:`rdzv_redis.client.RedisConfig`, ``rdzv server redis [--cluster]``.
PLUGIN = BackendPlugin(
    "redis", create_backend, REDIS_CONFIG_KEYS, extra="rdzv[redis]", server_kind="redis", local_server=_local_server,
    secret_keys=frozenset({"password", "sentinel_password"}), local_cluster=_local_cluster,
)  # fmt: skip
