"""The membership protocol applied by the server: the reference implementation.

A backend with :class:`~rdzv_core.backend.AtomicMembership` applies these operations on its
server, each atomically (Redis: ``rdzv_redis/scripts/round_*.lua``). This module is the
specification they mirror, and the implementation of the in-process ``memory`` backend
(:class:`MemoryMembership`). The contract suite ``tests/contracts.py::MembershipContract``
runs against every implementation.

The record of a run (:class:`RoundRecord`):

=================  ==============================================================
``incarnation``    random hex id, new whenever the record is created
``version``        bumped when the :func:`summary` changes (see below)
``round``          the current round, from 0
``complete``       whether it completed; ``world_size`` is its size then
``closed``         whether the rendezvous is closed
``deadline``       server time (s) the last call ends, ``None`` below ``min_nodes``
``participants``   node -> rank (rank ``0`` until completion fixes them, sorted by key)
``wait_list``      node -> arrival number
``redundancy``     node -> arrival number
``alive``          node -> server time (s) its keep-alive record lapses
``bootstrap``      what rank 0 of the complete round published, ``None`` before
``spec``           the :class:`RoundSpec` of the last operation that carried one (for status)
=================  ==============================================================

Only transitions that a waiting node must react to change the :func:`summary` and thereby the
version (which the server announces): a new round, completion, close, the last call
starting or stopping, the wait list or the missing participants becoming (non-)empty, rank 0
publishing the round's bootstrap address. A
burst of N joins therefore announces O(1) changes, not N.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rdzv_core.backend import Role, RoundSpec, Standing, check_bootstrap
from rdzv_core.state import RendezvousState

__all__ = [
    "SWEEP_LIMIT",
    "RoundRecord",
    "summary",
    "join",
    "leave",
    "complete",
    "keep_alive",
    "close",
    "publish_bootstrap",
    "standing",
    "spec_fields",
    "MemoryMembership",
]

#: At most this many lapsed nodes are removed by one sweep.
SWEEP_LIMIT = 1000


@dataclass
class RoundRecord:
    """The membership record of one run (see the module docs)."""

    incarnation: str = field(default_factory=lambda: secrets.token_hex(8))
    version: int = 1
    round: int = 0
    complete: bool = False
    closed: bool = False
    world_size: int = 0
    deadline: float | None = None
    participants: dict[str, int] = field(default_factory=dict)
    wait_list: dict[str, int] = field(default_factory=dict)
    redundancy: dict[str, int] = field(default_factory=dict)
    alive: dict[str, float] = field(default_factory=dict)
    seq: int = 0
    bootstrap: str | None = None
    spec: RoundSpec | None = None


Summary = tuple[int, bool, bool, bool, bool, bool, bool]


def summary(rec: RoundRecord) -> Summary:
    """What waiting nodes react to: ``(round, complete, closed, last call running,
    wait list non-empty, participants missing, bootstrap published)``."""
    missing = rec.complete and len(rec.participants) < rec.world_size
    return (
        rec.round,
        rec.complete,
        rec.closed,
        rec.deadline is not None,
        bool(rec.wait_list),
        missing,
        rec.bootstrap is not None,
    )


def standing(rec: RoundRecord | None, node: str, now: float, left_redundancy: bool = False) -> Standing:
    """The :class:`Standing` of ``node`` in ``rec`` (``None``: no record) at server time ``now``."""
    if rec is None:
        return Standing("", 0, 0, False, False, Role.NONE, None, 0, 0, 0, 0, None)
    role = Role.of(node, rec.participants, rec.wait_list, rec.redundancy)
    rank = rec.participants[node] if role is Role.PARTICIPANT and rec.complete else None
    deadline_in = None if rec.deadline is None else max(0.0, rec.deadline - now)
    return Standing(
        rec.incarnation,
        rec.version,
        rec.round,
        rec.complete,
        rec.closed,
        role,
        rank,
        rec.world_size,
        len(rec.participants),
        len(rec.wait_list),
        len(rec.redundancy),
        deadline_in,
        left_redundancy,
        rec.bootstrap if rec.complete else None,
    )


def _mark_complete(rec: RoundRecord) -> None:
    """Complete the round: fix the ranks, and drop the wait list. Its entries predate the
    round (joins of an open round make participants), so they were told the round opened and
    did not come: dead, or slow. Kept, they would make the members re-form again and again
    until swept; a slow one that is alive finds itself in no list at its next keep-alive and
    joins the wait list again."""
    rec.complete, rec.deadline, rec.bootstrap = True, None, None
    rec.participants = {node: rank for rank, node in enumerate(sorted(rec.participants))}
    rec.world_size = len(rec.participants)
    rec.wait_list.clear()


def _add_participant(rec: RoundRecord, node: str, spec: RoundSpec, now: float) -> None:
    rec.participants[node] = 0
    if len(rec.participants) == spec.min_nodes:
        rec.deadline = now + spec.last_call
    if len(rec.participants) >= spec.max_nodes:
        _mark_complete(rec)


def _append(queue: dict[str, int], rec: RoundRecord, node: str) -> None:
    rec.seq += 1
    queue[node] = rec.seq


def _remove(rec: RoundRecord, node: str, spec: RoundSpec) -> None:
    """Take ``node`` out of every list; re-open the round when its last participant left."""
    if rec.participants.pop(node, None) is not None:
        if rec.complete:
            if not rec.participants:
                rec.round += 1
                rec.complete, rec.world_size, rec.deadline, rec.bootstrap = False, 0, None, None
        elif len(rec.participants) < spec.min_nodes:
            rec.deadline = None
    rec.wait_list.pop(node, None)
    rec.redundancy.pop(node, None)


def _bump(rec: RoundRecord, before: Summary) -> bool:
    """Bump the version when the summary changed; return whether it did (then announce)."""
    if summary(rec) != before:
        rec.version += 1
        return True
    return False


def _reply(
    rec: RoundRecord, node: str, now: float, before: Summary, left_redundancy: bool = False
) -> tuple[Standing, bool]:
    """Bump the version if the summary changed, then answer ``(standing, announce)``."""
    announce = _bump(rec, before)
    return standing(rec, node, now, left_redundancy), announce


def join(rec: RoundRecord, node: str, spec: RoundSpec, now: float) -> tuple[Standing, bool]:
    """Keep-alive + admission of ``node`` (:meth:`AtomicMembership.join_round`).

    Returns ``(standing, announce)``: ``announce`` says the version changed (publish it).
    """
    before = summary(rec)
    rec.spec = spec
    rec.alive[node] = now + spec.dead_after
    left_redundancy = False
    if rec.closed:
        return standing(rec, node, now), False
    if node in rec.redundancy:
        if len(rec.participants) >= spec.max_nodes:
            return standing(rec, node, now), False
        del rec.redundancy[node]
        left_redundancy = True
    if node in rec.participants:
        return _reply(rec, node, now, before)
    if node in rec.wait_list:
        if rec.complete and len(rec.participants) < spec.max_nodes:
            return _reply(rec, node, now, before)
        del rec.wait_list[node]  # re-opened: join it; or full: move to the redundancy list
    if not rec.complete:
        _add_participant(rec, node, spec, now)
    elif len(rec.participants) < spec.max_nodes:
        _append(rec.wait_list, rec, node)
    else:
        _append(rec.redundancy, rec, node)
    return _reply(rec, node, now, before, left_redundancy)


def leave(rec: RoundRecord, node: str, spec: RoundSpec, now: float) -> tuple[Standing, bool]:
    """Remove ``node`` from every list (:meth:`AtomicMembership.leave_round`)."""
    before = summary(rec)
    _remove(rec, node, spec)
    return _reply(rec, node, now, before)


def complete(rec: RoundRecord, node: str, spec: RoundSpec, round_: int, now: float) -> tuple[Standing, bool]:
    """Complete round ``round_`` once its last call ended (:meth:`AtomicMembership.complete_round`)."""
    before = summary(rec)
    if (
        rec.round == round_
        and not rec.complete
        and not rec.closed
        and rec.deadline is not None
        and now >= rec.deadline
        and len(rec.participants) >= spec.min_nodes
    ):
        _mark_complete(rec)
    return _reply(rec, node, now, before)


def keep_alive(
    rec: RoundRecord, node: str, spec: RoundSpec, sweep: bool, now: float
) -> tuple[Standing, list[str], bool]:
    """Keep-alive of ``node`` and, when ``sweep``, removal of the lapsed others
    (:meth:`AtomicMembership.keep_alive_round`). Returns ``(standing, removed, announce)``."""
    before = summary(rec)
    rec.alive[node] = now + spec.dead_after
    removed: list[str] = []
    if sweep:
        lapsed = sorted((until, other) for other, until in rec.alive.items() if until < now)
        for _, other in lapsed[:SWEEP_LIMIT]:
            del rec.alive[other]
            if other in rec.participants or other in rec.wait_list or other in rec.redundancy:
                _remove(rec, other, spec)
                removed.append(other)
    announce = _bump(rec, before)
    return standing(rec, node, now), removed, announce


def close(rec: RoundRecord, node: str, now: float) -> tuple[Standing, bool]:
    """Mark the rendezvous closed (:meth:`AtomicMembership.close_rendezvous`)."""
    before = summary(rec)
    rec.closed = True
    return _reply(rec, node, now, before)


def publish_bootstrap(rec: RoundRecord, node: str, round_: int, value: str, now: float) -> tuple[Standing, bool]:
    """Record rank 0's bootstrap ``value`` for round ``round_`` (:meth:`BootstrapRecord.publish_bootstrap`):
    only while that round is current and complete, only from its rank 0, and only once."""
    check_bootstrap(value)
    before = summary(rec)
    if rec.round == round_ and rec.complete and rec.participants.get(node) == 0 and rec.bootstrap is None:
        rec.bootstrap = value
    return _reply(rec, node, now, before)


def to_state(rec: RoundRecord, run_id: str) -> RendezvousState:
    """The record as a :class:`RendezvousState` (for ``rdzv status``)."""
    return RendezvousState(
        run_id=run_id,
        round=rec.round,
        complete=rec.complete,
        closed=rec.closed,
        world_size=rec.world_size,
        deadline=rec.deadline,
        participants=dict(rec.participants),
        wait_list=list(rec.wait_list),
        redundancy_list=list(rec.redundancy),
        **spec_fields(rec.spec),
    )


def spec_fields(spec: RoundSpec | None) -> dict[str, Any]:
    """The :class:`RendezvousState` fields of ``spec`` (bounds and last call; ``None``s when
    unknown), which ``rdzv status`` shows."""
    if spec is None:
        return {}
    return {"min_nodes": spec.min_nodes, "max_nodes": spec.max_nodes, "last_call_timeout": spec.last_call}


class MemoryMembership:
    """:class:`~rdzv_core.backend.AtomicMembership` of one run held in this process.

    One lock makes each operation atomic; waiting blocks on a condition variable. ``clock``
    (seconds, float) stands for the server's clock, so a test can drive time.

    Args:
        run_id: The run id (str).
        clock: The "server time" source; default :func:`time.time` (wall clock, as a server's).
    """

    def __init__(self, run_id: str, clock: Callable[[], float] = time.time) -> None:
        self.run_id = run_id
        self._clock = clock
        self._rec: RoundRecord | None = None
        self._cond = threading.Condition()

    # -- test hooks -----------------------------------------------------------------------

    def lose_data(self) -> None:
        """Forget the record, as a server restarted without persistence does."""
        with self._cond:
            self._rec = None
            self._cond.notify_all()

    @property
    def record(self) -> RoundRecord | None:
        """The record itself (tests only; do not modify)."""
        return self._rec

    # -- AtomicMembership -----------------------------------------------------------------

    def _apply(self, fn: Callable[[RoundRecord, float], tuple[Standing, bool]], create: bool = True) -> Standing:
        with self._cond:
            if self._rec is None:
                if not create:
                    return standing(None, "", self._clock())
                self._rec = RoundRecord()
                self._cond.notify_all()
            result, announce = fn(self._rec, self._clock())
            if announce:
                self._cond.notify_all()
            return result

    def join_round(self, node: str, spec: RoundSpec) -> Standing:
        return self._apply(lambda rec, now: join(rec, node, spec, now))

    def leave_round(self, node: str, spec: RoundSpec) -> Standing:
        return self._apply(lambda rec, now: leave(rec, node, spec, now), create=False)

    def complete_round(self, node: str, spec: RoundSpec, round_: int) -> Standing:
        return self._apply(lambda rec, now: complete(rec, node, spec, round_, now), create=False)

    def keep_alive_round(self, node: str, spec: RoundSpec, sweep: bool) -> tuple[Standing, list[str]]:
        with self._cond:
            if self._rec is None:
                return standing(None, node, self._clock()), []
            result, removed, announce = keep_alive(self._rec, node, spec, sweep, self._clock())
            if announce:
                self._cond.notify_all()
            return result, removed

    def round_standing(self, node: str) -> Standing:
        with self._cond:
            return standing(self._rec, node, self._clock())

    def close_rendezvous(self, node: str) -> Standing:
        return self._apply(lambda rec, now: close(rec, node, now))

    def publish_bootstrap(self, node: str, round_: int, value: str) -> Standing:
        check_bootstrap(value)  # also without a record
        return self._apply(lambda rec, now: publish_bootstrap(rec, node, round_, value, now), create=False)

    def wait_for_round_change(self, seen: tuple[str, int] | None, timeout: float) -> bool:
        def changed() -> bool:
            current = ("", 0) if self._rec is None else (self._rec.incarnation, self._rec.version)
            return current != (seen or ("", 0))

        with self._cond:
            return self._cond.wait_for(changed, max(0.0, timeout)) if timeout > 0 else changed()

    def membership_state(self) -> RendezvousState | None:
        with self._cond:
            return None if self._rec is None else to_state(self._rec, self.run_id)
