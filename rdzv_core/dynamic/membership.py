"""The membership executor: a node's join loop over a backend whose server applies the
membership operations (:class:`~rdzv_core.backend.AtomicMembership`).

A node never reads or writes the whole state here. Each call is one request that answers
with the node's own :class:`~rdzv_core.backend.Standing` (O(1) bytes), and the server
announces only the transitions a waiting node must react to (O(1) per round), so a round of
N nodes costs each node O(1) requests and bytes. The critical path of the last node to join
a round that it fills is one request (``join_round`` answers with its rank).

The loop is a :meth:`MembershipExecutor.step` function that does at most one request and
then says what it waits for (:class:`Wait`), so a model can interleave many nodes on a fake
:class:`~rdzv_core.dynamic.clock.Clock`; :meth:`MembershipExecutor.run` is the blocking
driver the handler uses. Every wait is bounded by the node's next keep-alive (at most one
interval), and each keep-alive answers with the node's standing: a node whose place vanished
(the server lost its data, it was declared dead, its round moved on) re-joins within one
keep-alive interval, even when no notification reaches it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from rdzv_core.api import (
    RendezvousClosedError,
    RendezvousConnectionError,
    RendezvousError,
    RendezvousGracefulExitError,
    RendezvousTimeoutError,
)
from rdzv_core.backend import AtomicMembership, Role, Standing
from rdzv_core.dynamic.clock import SYSTEM_CLOCK, Clock
from rdzv_core.dynamic.ops import _ROLLBACK_PERIOD
from rdzv_core.dynamic.outage import OutageGuard
from rdzv_core.dynamic.settings import RendezvousSettings, closed_message

__all__ = ["Wait", "Joined", "MembershipExecutor"]

_T = TypeVar("_T")

#: Participants call ``complete_round`` this long (at most, uniformly) after the last call
#: ended: the first call completes the round, the announcement spares most of the others.
_COMPLETE_JITTER = 0.05
#: How long (seconds) to wait before looking again when the change notification failed.
_NOTIFY_RETRY = 0.25


@dataclass(frozen=True)
class Wait:
    """Nothing to do until a change is announced or the monotonic time ``until`` (s)."""

    until: float


@dataclass(frozen=True)
class Joined:
    """The node holds ``rank`` (int) in round ``round`` of ``world_size`` nodes."""

    round: int
    rank: int
    world_size: int
    standing: Standing


class MembershipExecutor:
    """Runs the join of one node, and its keep-alives, over an ``AtomicMembership`` backend.

    Args:
        node: The node key (str).
        settings: The :class:`RendezvousSettings`.
        backend: The backend (implements :class:`~rdzv_core.backend.AtomicMembership`).
        clock: The time source (tests pass a fake one).
        on_dead: Called with the keys of nodes this node's sweeps removed.
        on_standing: Called with each :class:`~rdzv_core.backend.Standing` the join's
            requests answer (roles reached, progress; never blocks).
    """

    def __init__(
        self,
        node: str,
        settings: RendezvousSettings,
        backend: AtomicMembership,
        clock: Clock = SYSTEM_CLOCK,
        on_dead: Callable[[list[str]], None] | None = None,
        on_standing: Callable[[Standing], None] | None = None,
    ) -> None:
        self._node = node
        self._settings = settings
        self._backend = backend
        self._clock = clock
        self._spec = settings.round_spec()
        self._on_dead = on_dead or (lambda nodes: None)
        self._on_standing = on_standing or (lambda standing: None)
        #: The last standing the server answered (``None`` before the first call).
        self.standing: Standing | None = None
        self._received_at = 0.0
        self._fresh = False
        self._complete_jitter = 0.0
        self._next_beat = float("-inf")
        self._guard = OutageGuard(settings, clock)
        self._deadline = float("inf")
        self._must_join = False
        self._stale = False

    # -- calls ------------------------------------------------------------------------------

    def note_outage(self) -> None:
        """See :meth:`OutageGuard.note_outage`."""
        self._guard.note_outage()

    def _call(self, fn: Callable[[], _T]) -> _T:
        return self._guard.call(fn)

    def _learn(self, standing: Standing) -> Standing:
        self.standing, self._received_at, self._fresh = standing, self._clock.monotonic(), True
        self._complete_jitter = self._clock.uniform(0.0, min(_COMPLETE_JITTER, self._spec.last_call / 10))
        return standing

    def refresh(self) -> Standing:
        """Read this node's standing (``round_standing``: one request)."""
        return self._learn(self._call(lambda: self._backend.round_standing(self._node)))

    def keep_alive(self) -> Standing:
        """Keep-alive, and sweep of lapsed nodes unless in an outage's grace period
        (``keep_alive_round``: one request); the standing comes along."""
        sweep = self._guard.may_sweep
        standing, removed = self._call(lambda: self._backend.keep_alive_round(self._node, self._spec, sweep))
        self._next_beat = self._clock.monotonic() + self._settings.interval_s
        if removed:
            self._on_dead(removed)
        return self._learn(standing)

    def next_beat_in(self) -> float:
        """Seconds (float, >= 0) until this node's next keep-alive is due: an interval after
        its last ``join_round`` or ``keep_alive_round``."""
        return max(0.0, self._next_beat - self._clock.monotonic())

    def publish_bootstrap(self, round_: int, value: str) -> Standing:
        """Publish rank 0's bootstrap ``value`` for round ``round_`` (``publish_bootstrap``:
        one request; the backend implements :class:`~rdzv_core.backend.BootstrapRecord`)."""
        return self._learn(self._call(lambda: self._backend.publish_bootstrap(self._node, round_, value)))  # type: ignore[attr-defined]

    def leave(self) -> Standing:
        """Leave every list (``leave_round``: one request)."""
        return self._learn(self._call(lambda: self._backend.leave_round(self._node, self._spec)))

    def close(self) -> Standing:
        """Mark the rendezvous closed (``close_rendezvous``: one request)."""
        return self._learn(self._call(lambda: self._backend.close_rendezvous(self._node)))

    # -- the join ---------------------------------------------------------------------------

    def begin_join(self, deadline: float) -> None:
        """Start a join that must complete by the monotonic time ``deadline`` (s)."""
        self._deadline = deadline
        self._must_join = True
        self._stale = False

    def wake(self, changed: bool) -> None:
        """Tell the executor how its :class:`Wait` ended: ``changed`` = a change was announced."""
        if changed:
            self._stale = True

    def step(self) -> Joined | Wait:
        """Do the next thing the join needs (at most one request) and say what comes next.

        Returns:
            :class:`Joined` when the node holds a rank in a complete round, else a
            :class:`Wait` (``until`` in the past means: step again at once).

        Raises:
            RendezvousClosedError: the rendezvous is closed.
            RendezvousGracefulExitError: it closed while this node was redundant.
            RendezvousTimeoutError: the join deadline passed (the node first tries, within a
                grace period, to take itself out of the lists).
            RendezvousConnectionError: the backend stayed unreachable for its retry budget.
        """
        now = self._clock.monotonic()
        if self._must_join or self.standing is None:
            self._must_join = False
            self._next_beat = now + self._settings.interval_s
            standing = self._learn(self._call(lambda: self._backend.join_round(self._node, self._spec)))
        elif self._stale:
            self._stale = False
            standing = self.refresh()
        else:
            standing = self.standing
        now = self._clock.monotonic()
        if self._fresh:
            self._fresh = False
            self._on_standing(standing)
            if standing.left_redundancy:
                self._deadline = now + self._settings.join_s  # torch: a spare that moves on starts over
        if standing.closed:
            if standing.role is Role.REDUNDANT:
                raise RendezvousGracefulExitError(
                    f"The rendezvous '{self._settings.run_id}' is closed; the redundant node '{self._node}' exits."
                )
            raise RendezvousClosedError(closed_message(self._settings.run_id))
        if standing.role is Role.PARTICIPANT and standing.complete and standing.rank is not None:
            return Joined(standing.round, standing.rank, standing.world_size, standing)
        spare = standing.role is Role.REDUNDANT  # no timeout while the round is full (torch)
        if now > self._deadline and not spare:
            self._time_out(standing, now)
        if self._needs_join(standing):
            self._must_join = True
            return Wait(now)
        complete_at = self._complete_at(standing)
        if complete_at is not None and now >= complete_at:
            self._learn(self._call(lambda: self._backend.complete_round(self._node, self._spec, standing.round)))
            return Wait(now)
        if now >= self._next_beat:
            self.keep_alive()
            return Wait(now)
        due = [self._next_beat] if spare else [self._deadline + 1e-3, self._next_beat]
        if complete_at is not None:
            due.append(complete_at)
        return Wait(min(due))

    def _needs_join(self, standing: Standing) -> bool:
        """Whether this node's place calls for ``join_round``: it has none, its wait list's
        round re-opened (or filled up), or room appeared while it was redundant."""
        role, full = standing.role, standing.participants >= self._spec.max_nodes
        if role is Role.NONE:
            return True
        if role is Role.WAITING:
            return not standing.complete or full
        if role is Role.REDUNDANT:
            return not full
        return False

    def _complete_at(self, standing: Standing) -> float | None:
        """When (monotonic s) this participant tries to complete the open round, if ever."""
        if standing.role is not Role.PARTICIPANT or standing.complete or standing.deadline_in is None:
            return None
        return self._received_at + standing.deadline_in + self._complete_jitter

    def _time_out(self, standing: Standing, now: float) -> None:
        if standing.role in (Role.PARTICIPANT, Role.WAITING) and now <= self._deadline + _ROLLBACK_PERIOD:
            try:
                self.leave()  # the message below tells where the node stood when it timed out
            except RendezvousError:
                pass  # best effort: its keep-alive lapses and the others remove it
        spec = self._spec
        raise RendezvousTimeoutError(
            f"The node '{self._node}' did not get a rank in run '{self._settings.run_id}' within the join timeout "
            f"({self._settings.join_s:g} s): round {standing.round} has {standing.participants} participant(s) "
            f"(min_nodes={spec.min_nodes}, max_nodes={spec.max_nodes}), {standing.waiting} waiting, "
            f"{standing.redundant} redundant; this node was {standing.role.value}."
        )

    def run(self, deadline: float) -> Joined:
        """Join and block until this node holds a rank (the driver of :meth:`step`).

        Raises:
            The errors of :meth:`step`.
        """
        self.begin_join(deadline)
        while True:
            outcome = self.step()
            if isinstance(outcome, Joined):
                return outcome
            timeout = outcome.until - self._clock.monotonic()
            if timeout > 0:
                self.wake(self.wait_for_change(timeout))

    def wait_for_change(self, timeout: float) -> bool:
        """Block until a change of the record is announced (``True``) or ``timeout`` seconds
        pass (``False``); a failed notification counts as a change after a short pause."""
        seen = None if self.standing is None else self.standing.change_id
        try:
            return self._backend.wait_for_round_change(seen, timeout)
        except RendezvousConnectionError:
            # Only a hint: look again soon; the next request retries for the full budget.
            self.note_outage()
            self._clock.sleep(min(timeout, _NOTIFY_RETRY))
            return True
