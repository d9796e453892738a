"""Redis key and channel names of a run.

Every key of run ``R`` starts with ``rdzv:{R}:``. The braces make ``R`` the *hash tag*: on
Redis Cluster all keys of a run map to one slot, so each Lua script touches one slot.

===============================  ======  ===================================================
Key                              Type    Content
===============================  ======  ===================================================
``rdzv:{R}:state``               STRING  ``"RDZV1 <token>\\n"`` + the opaque state bytes
``rdzv:{R}:alive``               ZSET    node -> last keep-alive (server time, microseconds)
``rdzv:{R}:alive:until``         ZSET    node -> when its record lapses (server time, us)
``rdzv:{R}:joins``               ZSET    join queue: node -> arrival number
``rdzv:{R}:joins:seq``           STRING  arrival counter of the join queue
``rdzv:{R}:store``               HASH    the run's c10d store: key -> value bytes
``rdzv:{R}:round``               HASH    the membership: inc (16 hex, new per record), ver,
                                         round, complete 0/1, closed 0/1, world, deadline
                                         (server time, us; absent: none), seq (arrivals)
``rdzv:{R}:round:participants``  ZSET    node -> rank (0 until the round completes)
``rdzv:{R}:round:wait``          ZSET    the wait list: node -> arrival number
``rdzv:{R}:round:redundant``     ZSET    the redundancy list: node -> arrival number
===============================  ======  ===================================================

Channels (``PUBLISH``): ``rdzv:{R}:state:changed`` carries each new token;
``rdzv:{R}:round:changed`` carries ``"<inc>:<ver>"`` of the membership after each announced
transition;
``rdzv:{R}:store:set:<key>`` carries the name of store key ``<key>`` each time it is written
(one channel per key: a blocked ``get`` subscribes to the keys it waits for and hears nothing
else). Clients ``SUBSCRIBE`` to the channels they need, never to a pattern.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CHANNEL_PREFIX", "RunKeys"]

#: Every key and channel of rdzv starts with this.
CHANNEL_PREFIX = "rdzv:"


@dataclass(frozen=True)
class RunKeys:
    """The names of the Redis keys and channels of run ``run_id`` (see the module docs).

    Args:
        run_id: The run id (a non-empty str).
        store_name: The name of the store hash (``"store"``); several stores may share a run.
    """

    run_id: str
    store_name: str = "store"

    @property
    def prefix(self) -> str:
        """``rdzv:{R}:`` — the prefix of every key of the run."""
        return f"{CHANNEL_PREFIX}{{{self.run_id}}}:"

    @property
    def state(self) -> str:
        return self.prefix + "state"

    @property
    def alive(self) -> str:
        return self.prefix + "alive"

    @property
    def alive_until(self) -> str:
        return self.prefix + "alive:until"

    @property
    def joins(self) -> str:
        return self.prefix + "joins"

    @property
    def joins_seq(self) -> str:
        return self.prefix + "joins:seq"

    @property
    def store(self) -> str:
        return self.prefix + self.store_name

    @property
    def state_channel(self) -> str:
        return self.prefix + "state:changed"

    @property
    def round(self) -> str:
        return self.prefix + "round"

    @property
    def participants(self) -> str:
        return self.prefix + "round:participants"

    @property
    def wait_list(self) -> str:
        return self.prefix + "round:wait"

    @property
    def redundancy_list(self) -> str:
        return self.prefix + "round:redundant"

    @property
    def round_channel(self) -> str:
        return self.prefix + "round:changed"

    def round_keys(self) -> list[str]:
        """The KEYS of ``scripts/round.lua``: the membership keys, the liveness records, then
        the other keys of the run (their expiry is refreshed with every write)."""
        return [
            self.round,
            self.participants,
            self.wait_list,
            self.redundancy_list,
            self.alive,
            self.alive_until,
            self.state,
            self.store,
            self.joins,
            self.joins_seq,
        ]

    @property
    def store_channel_prefix(self) -> str:
        """``rdzv:{R}:store:set:`` — store key ``k`` is announced on this + ``k``."""
        return self.store + ":set:"

    def all_keys(self) -> list[str]:
        """Every data key of the run, state first (used to refresh expiry and to clean up)."""
        return [
            self.state,
            self.alive,
            self.alive_until,
            self.joins,
            self.joins_seq,
            self.store,
            self.round,
            self.participants,
            self.wait_list,
            self.redundancy_list,
        ]
