"""rdzv Redis plug-in (``pip install 'rdzv[redis]'``).

* :class:`RedisRendezvousBackend` — the shared rendezvous state of a run, compare-and-set by
  fencing token in one Lua script, with push notification of changes and server-clock
  liveness records.
* :class:`RedisStore` — the c10d store of a run in one Redis hash, blocking reads without
  polling.
* :func:`create_backend` — both of them from :class:`~rdzv_core.api.RendezvousParameters`.
* :class:`RedisServer` — a throw-away local ``redis-server``.

Importing this package does not import redis-py; using a backend or store without it raises an
``ImportError`` that says ``pip install 'rdzv[redis]'``.
"""

from rdzv_redis.backend import RedisRendezvousBackend, create_backend
from rdzv_redis.client import REDIS_CONFIG_KEYS, RedisClient, RedisConfig
from rdzv_redis.plugin import PLUGIN
from rdzv_redis.server import RedisServer
from rdzv_redis.store import RedisStore

__all__ = [
    "REDIS_CONFIG_KEYS",
    "RedisClient",
    "RedisConfig",
    "RedisRendezvousBackend",
    "RedisServer",
    "RedisStore",
    "create_backend",
    "PLUGIN",
]
