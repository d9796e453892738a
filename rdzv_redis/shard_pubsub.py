"""Sharded pub/sub on Redis Cluster, shaped like redis-py's ``PubSub`` for the Notifier.

On Redis Cluster the Lua scripts announce with ``SPUBLISH`` (see :func:`rdzv_redis.lua.scripts_for`),
which delivers a message only to the clients of the shard serving the channel's slot. Every
channel of a run carries the run's hash tag, so one connection to the master of that slot
hears all of them. :class:`ShardPubSub` is that connection: it ``SSUBSCRIBE``\\ s on the
master named by the client's slot map and presents what it reads as classic pub/sub
(``subscribe``/``message``/``unsubscribe``), the interface :class:`~rdzv_redis.notify.Notifier`
reads.

When the shard changes hands (a fail-over: the socket breaks; a slot migration: the server
``SUNSUBSCRIBE``\\ s its clients of the slot), :meth:`ShardPubSub.get_message` raises
``redis.ConnectionError``; the Notifier then wakes its waiters with ``resync`` (they check the
server) and connects again through :meth:`ShardPubSub.factory`, which refreshes the slot map
(``CLUSTER SLOTS``) before every connection but the first, so it finds the new master.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from typing import Any

__all__ = ["ShardPubSub"]

logger = logging.getLogger(__name__)

#: Sharded pub/sub message types -> the classic ones the Notifier handles.
_KINDS = {b"ssubscribe": "subscribe", b"sunsubscribe": "unsubscribe", b"smessage": "message"}


class ShardPubSub:
    """One ``SSUBSCRIBE`` connection to the master serving the slot of its channels.

    Args:
        cluster: The ``redis.cluster.RedisCluster`` whose slot map names the master.
        push_handler: redis-py's ``push_handler_func`` for RESP3 pushes.

    Channels are str or bytes and must all hash to one slot (the channels of one run do);
    the connection is made on the first :meth:`subscribe`. Not thread-safe: the Notifier
    serialises its calls.
    """

    def __init__(self, cluster: Any, push_handler: Callable[[Any], Any]) -> None:
        self._cluster = cluster
        self._push_handler = push_handler
        self._pubsub: Any = None
        self._node_name: str | None = None
        self._own_pool: Any = None
        #: Channels we asked to leave, whose ``sunsubscribe`` is still to come.
        self._leaving: Counter[bytes] = Counter()

    @classmethod
    def factory(cls, cluster: Any, push_handler: Callable[[Any], Any]) -> Callable[[], ShardPubSub]:
        """``() -> ShardPubSub`` for :class:`~rdzv_redis.notify.Notifier`: every call after the
        first refreshes the cluster's slot map first (a reconnection follows a broken
        connection or a moved slot, so the map may be stale)."""
        calls = [0]

        def make() -> ShardPubSub:
            calls[0] += 1
            if calls[0] > 1:
                cluster.nodes_manager.initialize()
            return cls(cluster, push_handler)

        return make

    @property
    def node_name(self) -> str | None:
        """``host:port`` of the master this connection listens to, once connected."""
        return self._node_name

    def subscribe(self, *channels: str | bytes) -> None:
        """``SSUBSCRIBE`` to ``channels`` on the master of their slot (connects on first use).

        Raises:
            redis.ConnectionError, redis.RedisClusterException: the master is unreachable,
                or the slot map has no master for the slot.
        """
        if not channels:
            return
        if self._pubsub is None:
            node = self._cluster.get_node_from_key(channels[0])
            self._pubsub = self._own_redis(node).pubsub(
                ignore_subscribe_messages=False, push_handler_func=self._push_handler
            )
            self._node_name = node.name
        self._pubsub.ssubscribe(*channels)

    def _own_redis(self, node: Any) -> Any:
        """A ``redis.Redis`` on a pool of its own with the node's connection settings: taken
        from the node's command pool, the listener would take the connection the client's
        first command opened, and the next command would pay for a new handshake."""
        import redis

        pool = self._cluster.get_redis_connection(node).connection_pool
        own = type(pool)(connection_class=pool.connection_class, max_connections=1, **pool.connection_kwargs)
        self._own_pool = own
        return redis.Redis(connection_pool=own)

    def unsubscribe(self, *channels: str | bytes) -> None:
        """``SUNSUBSCRIBE`` from ``channels``."""
        if self._pubsub is None or not channels:
            return
        for channel in channels:
            self._leaving[channel.encode() if isinstance(channel, str) else channel] += 1
        self._pubsub.sunsubscribe(*channels)

    def get_message(self, timeout: float = 0.0) -> dict[str, Any] | None:
        """The next message within ``timeout`` seconds (``None`` if none), as classic pub/sub:
        ``{"type": "subscribe" | "unsubscribe" | "message", "channel": bytes, "data": ...}``.

        Raises:
            redis.ConnectionError: the connection broke, or the server dropped a subscription
                nobody asked to leave (its slot moved to another master).
        """
        if self._pubsub is None:
            return None
        message = self._pubsub.get_message(ignore_subscribe_messages=False, timeout=timeout)
        if message is None:
            return None
        kind = message["type"]
        kind = kind if isinstance(kind, bytes) else str(kind).encode()
        channel = message["channel"]
        if kind == b"sunsubscribe":
            if self._leaving[channel] > 0:
                self._leaving[channel] -= 1
            else:
                from redis.exceptions import ConnectionError as RedisConnectionError

                raise RedisConnectionError(
                    f"the master {self._node_name} no longer serves the slot of a shard channel (it moved)"
                )
        translated = _KINDS.get(kind)
        if translated is None:  # e.g. a pong: nothing for the Notifier
            return None
        return {"type": translated, "channel": channel, "data": message["data"]}

    def close(self) -> None:
        """Close the connection (idempotent)."""
        pubsub, self._pubsub = self._pubsub, None
        pool, self._own_pool = self._own_pool, None
        if pubsub is not None:
            pubsub.close()
        if pool is not None:
            pool.disconnect()
