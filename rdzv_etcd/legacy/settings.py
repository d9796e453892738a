"""Constants and configuration of the legacy etcd rendezvous (torch's ``etcd`` backend).

The defaults are torch's (``torch.distributed.elastic.rendezvous.etcd_rendezvous``): nodes of
torch's ``EtcdRendezvousHandler`` and of rdzv's take part in one rendezvous only when both use
them. The TTLs can be shortened for tests (``setup_ttl``, ... below); a fleet that mixes torch
and rdzv nodes must leave them alone.
"""

from __future__ import annotations

from dataclasses import dataclass

from rdzv_core.api import RendezvousParameters

__all__ = [
    "DEFAULT_PREFIX",
    "DEFAULT_TIMEOUT",
    "DEFAULT_LAST_CALL_TIMEOUT",
    "CONST_ETCD_SETUP_TTL",
    "CONST_ETCD_FROZEN_TTL",
    "CONST_ETCD_JOINABLE_EPHEMERAL_TTL",
    "CONST_WORKER_KEEPALIVE_TTL",
    "CONST_RUNID_SUBROOT_TTL",
    "LEGACY_CONFIG_KEYS",
    "LegacySettings",
]

#: etcd path under which every run lives (torch's ``etcd_prefix`` default).
DEFAULT_PREFIX = "/torchelastic/p2p"
#: Seconds ``next_rendezvous`` may take (torch's ``timeout`` default).
DEFAULT_TIMEOUT = 600.0
#: Seconds the join window stays open once ``min_nodes`` joined (torch's ``last_call_timeout``).
DEFAULT_LAST_CALL_TIMEOUT = 30.0
#: Seconds the ``setup`` state lives (the creator of a version holds it while counting).
CONST_ETCD_SETUP_TTL = 5
#: Seconds a ``frozen`` state lives without progress (every confirmation renews it).
CONST_ETCD_FROZEN_TTL = 10
#: Seconds a ``joinable`` state with at least ``min_nodes`` lives unless the last-call node renews it.
CONST_ETCD_JOINABLE_EPHEMERAL_TTL = 10
#: Seconds a member's keep-alive key ``v_<version>/rank_<rank>`` lives without renewal.
CONST_WORKER_KEEPALIVE_TTL = 10
#: Seconds the run's sub-tree ``run_<id>`` lives once no node renews it (two hours).
CONST_RUNID_SUBROOT_TTL = 7200

#: The configuration keys of the legacy handler's own (the etcd connection keys are added).
_OWN_KEYS = frozenset(
    {
        "timeout",
        "last_call_timeout",
        "etcd_prefix",
        "setup_ttl",
        "frozen_ttl",
        "joinable_ttl",
        "keep_alive_ttl",
        "run_ttl",
    }
)
#: Everything ``--rdzv-conf`` may hold for the legacy backends: torch's keys (``timeout``,
#: ``last_call_timeout``, ``etcd_prefix``, ``protocol``, ``cacert``, ``cert``, ``key``), the
#: etcd connection keys of rdzv (``username``, ``password``, ``read_timeout``) and the TTLs.
LEGACY_CONFIG_KEYS = _OWN_KEYS | frozenset(
    {"protocol", "cacert", "cert", "key", "username", "password", "read_timeout"}
)


@dataclass(frozen=True)
class LegacySettings:
    """How one legacy node behaves; build with :meth:`from_params`.

    Attributes:
        prefix: etcd path of all runs (str, starts with ``/``; torch's ``etcd_prefix``).
        timeout: Seconds (float > 0) one ``next_rendezvous`` may take.
        last_call_timeout: Seconds (float > 0) the join window stays open after ``min_nodes``.
        setup_ttl, frozen_ttl, joinable_ttl, keep_alive_ttl, run_ttl: The TTLs (int seconds
            >= 1) of the ``setup``, ``frozen`` and ``joinable`` states, of a member's
            keep-alive key and of the run's sub-tree.
    """

    prefix: str = DEFAULT_PREFIX
    timeout: float = DEFAULT_TIMEOUT
    last_call_timeout: float = DEFAULT_LAST_CALL_TIMEOUT
    setup_ttl: int = CONST_ETCD_SETUP_TTL
    frozen_ttl: int = CONST_ETCD_FROZEN_TTL
    joinable_ttl: int = CONST_ETCD_JOINABLE_EPHEMERAL_TTL
    keep_alive_ttl: int = CONST_WORKER_KEEPALIVE_TTL
    run_ttl: int = CONST_RUNID_SUBROOT_TTL

    @classmethod
    def from_params(cls, params: RendezvousParameters) -> LegacySettings:
        """Read ``params.config`` (absent keys: torch's defaults).

        Raises:
            ValueError: ``timeout``/``last_call_timeout`` not a number > 0, a TTL not an
                integer >= 1, or ``etcd_prefix`` not an absolute path; the message names the
                key and the value.
        """
        prefix = params.get_as_str("etcd_prefix", strip=True) or DEFAULT_PREFIX
        if not prefix.startswith("/") or "//" in prefix:
            raise ValueError(
                f"The rendezvous configuration option 'etcd_prefix' must be an absolute etcd path (got {prefix!r})."
            )
        ttls = {name: _ttl(params, name, getattr(cls, name)) for name in _TTL_KEYS}
        return cls(
            prefix=prefix.rstrip("/") or "/",
            timeout=_seconds(params, "timeout", DEFAULT_TIMEOUT),
            last_call_timeout=_seconds(params, "last_call_timeout", DEFAULT_LAST_CALL_TIMEOUT),
            **ttls,
        )


_TTL_KEYS = ("setup_ttl", "frozen_ttl", "joinable_ttl", "keep_alive_ttl", "run_ttl")


def _seconds(params: RendezvousParameters, key: str, default: float) -> float:
    value = params.get_as_float(key)  # ValueError naming the key when not a number
    if value is None:
        return default
    if not value > 0:
        raise ValueError(
            f"The rendezvous configuration option '{key}' must be a positive number of seconds (got {params.get(key)!r})."
        )
    return value


def _ttl(params: RendezvousParameters, key: str, default: int) -> int:
    value = params.get_as_int(key)
    if value is None:
        return default
    if value < 1:
        raise ValueError(
            f"The rendezvous configuration option '{key}' must be an integer >= 1 second (got {params.get(key)!r})."
        )
    return value
