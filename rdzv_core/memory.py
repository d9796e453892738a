"""The ``memory`` backend: rendezvous between handlers of one process (tests, single host).

All handlers of a run id in this process share one :class:`~rdzv_core.store.HashStore` (the
round's store, and torch's state blob) and one :class:`~rdzv_core.rounds.MemoryMembership`
(the membership the handlers join through, as on the production backends).
"""

from __future__ import annotations

import threading

from rdzv_core.api import RendezvousParameters
from rdzv_core.backend import RoundSpec, Standing
from rdzv_core.plugin import BackendPlugin
from rdzv_core.rounds import MemoryMembership
from rdzv_core.state import RendezvousState
from rdzv_core.store import HashStore
from rdzv_core.store_backend import StoreRendezvousBackend

__all__ = ["PLUGIN", "create_backend", "shared_store", "shared_membership", "MemoryRendezvousBackend"]

_stores: dict[str, HashStore] = {}
_memberships: dict[str, MemoryMembership] = {}
_lock = threading.Lock()


def shared_store(run_id: str) -> HashStore:
    """Return this process's store of ``run_id`` (created on first use)."""
    with _lock:
        return _stores.setdefault(run_id, HashStore())


def shared_membership(run_id: str) -> MemoryMembership:
    """Return this process's membership record holder of ``run_id`` (created on first use)."""
    with _lock:
        if run_id not in _memberships:
            _memberships[run_id] = MemoryMembership(run_id)
        return _memberships[run_id]


class MemoryRendezvousBackend(StoreRendezvousBackend):
    """torch's state contract over a :class:`HashStore` plus the membership operations of a
    shared :class:`MemoryMembership` (:class:`~rdzv_core.backend.AtomicMembership`).

    Args:
        store: The run's store (the state blob lives under ``rdzv.<run_id>.``).
        membership: The run's membership, shared by every node of the run.
    """

    def __init__(self, store: HashStore, membership: MemoryMembership) -> None:
        super().__init__(store, membership.run_id, name="memory")
        self._membership = membership

    def join_round(self, node: str, spec: RoundSpec) -> Standing:
        return self._membership.join_round(node, spec)

    def leave_round(self, node: str, spec: RoundSpec) -> Standing:
        return self._membership.leave_round(node, spec)

    def complete_round(self, node: str, spec: RoundSpec, round_: int) -> Standing:
        return self._membership.complete_round(node, spec, round_)

    def keep_alive_round(self, node: str, spec: RoundSpec, sweep: bool) -> tuple[Standing, list[str]]:
        return self._membership.keep_alive_round(node, spec, sweep)

    def round_standing(self, node: str) -> Standing:
        return self._membership.round_standing(node)

    def close_rendezvous(self, node: str) -> Standing:
        return self._membership.close_rendezvous(node)

    def publish_bootstrap(self, node: str, round_: int, value: str) -> Standing:
        return self._membership.publish_bootstrap(node, round_, value)

    def wait_for_round_change(self, seen: tuple[str, int] | None, timeout: float) -> bool:
        return self._membership.wait_for_round_change(seen, timeout)

    def membership_state(self) -> RendezvousState | None:
        return self._membership.membership_state()


def create_backend(params: RendezvousParameters) -> tuple[MemoryRendezvousBackend, HashStore]:
    """The backend and the store of ``params.run_id`` in this process (``params.endpoint`` is
    ignored; no configuration key of its own)."""
    store = shared_store(params.run_id)
    return MemoryRendezvousBackend(store, shared_membership(params.run_id)), store


#: The ``memory`` backend (``rdzv.backends: memory = "rdzv_core.memory:PLUGIN"``): one process
#: only, so not offered to torchrun, whose agents are processes of their own.
PLUGIN = BackendPlugin("memory", create_backend, frozenset(), extra="rdzv", torch=False, cross_process=False)
