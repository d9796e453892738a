"""The Lua scripts of the Redis plug-in, read once from ``rdzv_redis/scripts/*.lua``.

Each constant holds a script's source text. :class:`rdzv_redis.client.RedisClient` registers
them with redis-py's ``register_script``: they run by SHA (``EVALSHA``) and are loaded again
transparently after ``SCRIPT FLUSH`` or a server restart. Every script touches the keys of
one run only, which share the hash tag ``{run_id}``, so they run on Redis Cluster too.

On Redis Cluster the scripts announce on *sharded* pub/sub (``SPUBLISH``, Redis >= 7): the
channels share the run's hash tag, so each message stays on the shard that serves the run's
slot instead of being broadcast to every node. :func:`scripts_for` gives either set.
"""

from __future__ import annotations

import functools
from importlib import resources

__all__ = [
    "SET_STATE",
    "KEEP_ALIVE",
    "HEARTBEAT_AGES",
    "STORE_SET",
    "STORE_ADD",
    "STORE_COMPARE_SET",
    "STORE_APPEND",
    "STORE_EXISTS",
    "ENQUEUE_JOIN",
    "ROUND",
    "ALL_SCRIPTS",
    "scripts_for",
]


def _load(name: str) -> str:
    """Return the text of ``rdzv_redis/scripts/<name>.lua``."""
    return (resources.files("rdzv_redis") / "scripts" / f"{name}.lua").read_text(encoding="utf-8")


SET_STATE = _load("set_state")
KEEP_ALIVE = _load("keep_alive")
HEARTBEAT_AGES = _load("heartbeat_ages")
STORE_SET = _load("store_set")
STORE_ADD = _load("store_add")
STORE_COMPARE_SET = _load("store_compare_set")
STORE_APPEND = _load("store_append")
STORE_EXISTS = _load("store_exists")
ENQUEUE_JOIN = _load("enqueue_join")
ROUND = _load("round")

#: Script name -> source, as registered on every client.
ALL_SCRIPTS: dict[str, str] = {
    "set_state": SET_STATE,
    "keep_alive": KEEP_ALIVE,
    "heartbeat_ages": HEARTBEAT_AGES,
    "store_set": STORE_SET,
    "store_add": STORE_ADD,
    "store_compare_set": STORE_COMPARE_SET,
    "store_append": STORE_APPEND,
    "store_exists": STORE_EXISTS,
    "enqueue_join": ENQUEUE_JOIN,
    "round": ROUND,
}


#: The one command the sharded variant changes, as the scripts call it.
_PUBLISH = "redis.call('PUBLISH', "


@functools.cache
def scripts_for(sharded: bool) -> dict[str, str]:
    """Script name -> source: :data:`ALL_SCRIPTS` (classic ``PUBLISH``) when ``sharded`` is
    false, else the same scripts announcing with ``SPUBLISH`` (Redis Cluster mode)."""
    if not sharded:
        return ALL_SCRIPTS
    return {name: source.replace(_PUBLISH, "redis.call('SPUBLISH', ") for name, source in ALL_SCRIPTS.items()}
