"""The dynamic rendezvous handler: rounds, wait list, redundancy list, keep-alives, close.

Semantics follow torch's ``DynamicRendezvousHandler``: every node runs small *operations*
(join, exit, close, keep-alive) that look at the shared :class:`RendezvousState` and return the
next :class:`_Action`; an executor applies the action to its local copy and writes it back with
compare-and-set. What differs from torch:

* the state is a validated msgspec schema, never pickle (:mod:`rdzv_core.state`);
* waiting nodes block on the backend's change notification when it has one
  (:class:`~rdzv_core.backend.ChangeNotifier`); otherwise they poll with a short, jittered,
  growing interval (10 ms to 250 ms), never a fixed 1 s sleep;
* with a :class:`~rdzv_core.backend.LivenessTracker`, keep-alives write a per-node record
  and never the shared state; each node checks only its ring predecessors (nodes sorted by
  key), so finding dead nodes costs O(1) per node and interval, O(N) for the whole run;
* with a :class:`~rdzv_core.backend.JoinQueue`, a joining node enqueues itself; the node at
  the head of the queue waits for the burst to settle and admits every queued node with one
  compare-and-set, so N joins cost O(N) small requests and a few state writes (torch: O(N^2)
  lost compare-and-sets, which collapses past ~100 nodes);
* a failed compare-and-set uses the state the backend returned (no extra read) and backs off
  with jitter;
* removing a participant from a complete round makes :meth:`num_nodes_waiting` report the
  missing nodes, so agents re-rendezvous;
* one log line per transition and :meth:`DynamicRendezvousHandler.add_event_listener`.
"""

from __future__ import annotations

import bisect
import enum
import itertools
import logging
import random
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TypeVar

from rdzv_core.api import (
    RendezvousClosedError,
    RendezvousConnectionError,
    RendezvousError,
    RendezvousGracefulExitError,
    RendezvousHandler,
    RendezvousInfo,
    RendezvousParameters,
    RendezvousStoreInfo,
    RendezvousTimeoutError,
)
from rdzv_core.backend import ChangeNotifier, JoinQueue, LivenessTracker, RendezvousBackend, Token
from rdzv_core.state import NodeDesc, NodeDescGenerator, RendezvousState, decode_state, encode_state
from rdzv_core.store import PrefixStore, Store

__all__ = [
    "HANDLER_CONFIG_KEYS",
    "RendezvousTimeout",
    "RendezvousSettings",
    "RendezvousEvent",
    "DynamicRendezvousHandler",
    "create_handler",
]

logger = logging.getLogger(__name__)
_T = TypeVar("_T")

#: Configuration keys read by :func:`create_handler` (backends add their own).
HANDLER_CONFIG_KEYS = frozenset(
    {
        "join_timeout",
        "last_call_timeout",
        "close_timeout",
        "heartbeat_timeout",
        "keep_alive_interval",
        "keep_alive_max_attempt",
    }
)

#: After an operation's deadline, a node still tries this long to take itself out of the round.
_ROLLBACK_PERIOD = 5.0
#: Polling bounds (seconds) for backends without change notification.
_POLL_MIN, _POLL_MAX = 0.01, 0.25
#: Cap (seconds) of the jittered backoff after a lost compare-and-set.
_BACKOFF_CAP = 0.25
#: Join queue: the head waits until the queue has not grown for _SETTLE seconds (at most
#: _GATHER_MAX) before admitting it; a queued node not admitted within _FALLBACK (+ jitter)
#: admits the queue itself (the head may have died).
_SETTLE, _GATHER_MAX, _FALLBACK = 0.05, 1.0, 1.0
#: ... plus this much per node ahead of it in the queue.
_FALLBACK_PER_NODE = 0.002


class RendezvousTimeout:
    """Timeouts of the rendezvous, each a positive ``timedelta`` (``None`` = default).

    Args:
        join: Total time for a round to complete (default 600 s).
        last_call: Wait after ``min_nodes`` joined before completing (default 30 s).
        close: Time to mark the rendezvous closed (default 30 s).
        heartbeat: Time for one keep-alive to complete (default 5 s).

    Raises:
        ValueError: a timeout is zero or negative; the message names it.
    """

    _DEFAULTS = {
        "join": timedelta(seconds=600),
        "last_call": timedelta(seconds=30),
        "close": timedelta(seconds=30),
        "heartbeat": timedelta(seconds=5),
    }

    def __init__(
        self,
        join: timedelta | None = None,
        last_call: timedelta | None = None,
        close: timedelta | None = None,
        heartbeat: timedelta | None = None,
    ) -> None:
        given = {"join": join, "last_call": last_call, "close": close, "heartbeat": heartbeat}
        for name, value in given.items():
            value = self._DEFAULTS[name] if value is None else value
            if not isinstance(value, timedelta) or value <= timedelta(0):
                raise ValueError(f"The {name} timeout ({value!r}) must be a positive timedelta.")
            setattr(self, "_" + name, value)

    @property
    def join(self) -> timedelta:
        return self._join  # type: ignore[attr-defined,no-any-return]

    @property
    def last_call(self) -> timedelta:
        return self._last_call  # type: ignore[attr-defined,no-any-return]

    @property
    def close(self) -> timedelta:
        return self._close  # type: ignore[attr-defined,no-any-return]

    @property
    def heartbeat(self) -> timedelta:
        return self._heartbeat  # type: ignore[attr-defined,no-any-return]


@dataclass(frozen=True)
class RendezvousSettings:
    """Settings of one rendezvous.

    Attributes:
        run_id: Run id shared by the nodes.
        min_nodes: Minimum nodes of a round (``>= 1``).
        max_nodes: Maximum nodes of a round (``>= min_nodes``).
        timeout: The :class:`RendezvousTimeout`.
        keep_alive_interval: Time between two keep-alives of a node.
        keep_alive_max_attempt: Missed keep-alives after which a node counts as dead.
    """

    run_id: str
    min_nodes: int
    max_nodes: int
    timeout: RendezvousTimeout
    keep_alive_interval: timedelta
    keep_alive_max_attempt: int

    def __post_init__(self) -> None:
        if not self.run_id:
            raise ValueError("The run id must be a non-empty string.")
        if self.min_nodes < 1 or self.max_nodes < self.min_nodes:
            raise ValueError(f"Need 1 <= min_nodes <= max_nodes (got min_nodes={self.min_nodes}, max_nodes={self.max_nodes}).")
        if self.keep_alive_interval <= timedelta(0):
            raise ValueError(f"The keep-alive interval ({self.keep_alive_interval}) must be positive.")
        if self.keep_alive_max_attempt < 1:
            raise ValueError(f"The keep-alive max attempt ({self.keep_alive_max_attempt}) must be >= 1.")

    @property
    def interval_s(self) -> float:
        return self.keep_alive_interval.total_seconds()

    @property
    def dead_after_s(self) -> float:
        """Seconds of silence after which a node counts as dead."""
        return self.interval_s * self.keep_alive_max_attempt


@dataclass(frozen=True)
class RendezvousEvent:
    """One transition of a node, given to event listeners (for metrics and tracing).

    ``name`` is one of ``joining``, ``completed``, ``waiting``, ``removed_dead_nodes``,
    ``closed``, ``timed_out``, ``graceful_exit``, ``left``, ``error``.
    """

    name: str
    run_id: str
    node: str
    round: int
    message: str
    rank: int | None = None
    world_size: int | None = None
    time: float = field(default_factory=time.time)


class _Action(enum.Enum):
    KEEP_ALIVE = enum.auto()
    ADD_TO_PARTICIPANTS = enum.auto()
    ADD_TO_WAIT_LIST = enum.auto()
    ADD_TO_REDUNDANCY_LIST = enum.auto()
    REMOVE_FROM_PARTICIPANTS = enum.auto()
    REMOVE_FROM_WAIT_LIST = enum.auto()
    REMOVE_FROM_REDUNDANCY_LIST = enum.auto()
    MARK_RENDEZVOUS_COMPLETE = enum.auto()
    MARK_RENDEZVOUS_CLOSED = enum.auto()
    SYNC = enum.auto()
    ERROR_CLOSED = enum.auto()
    ERROR_TIMEOUT = enum.auto()
    ERROR_GRACEFUL_EXIT = enum.auto()
    FINISH = enum.auto()


# --------------------------------------------------------------------------------------------
# State transitions shared by the operations and the dead-node sweep


def _remove_nodes(state: RendezvousState, nodes: Sequence[str], settings: RendezvousSettings) -> bool:
    """Remove ``nodes`` from every list of ``state``; return whether a participant was removed."""
    removed_participant = False
    for node in nodes:
        state.last_heartbeats.pop(node, None)
        if state.participants.pop(node, None) is not None:
            removed_participant = True
        if node in state.wait_list:
            state.wait_list.remove(node)
        if node in state.redundancy_list:
            state.redundancy_list.remove(node)
    if removed_participant:
        if state.complete:
            if not state.participants:  # the last one left: the next round starts
                state.complete = False
                state.world_size = 0
                state.round += 1
        elif len(state.participants) < settings.min_nodes:
            state.deadline = None
    return removed_participant


def _mark_complete(state: RendezvousState) -> None:
    state.complete = True
    state.deadline = None
    state.participants = {node: rank for rank, node in enumerate(sorted(state.participants))}
    state.world_size = len(state.participants)


def _add_participant(state: RendezvousState, node: str, settings: RendezvousSettings) -> None:
    if node in state.wait_list:
        state.wait_list.remove(node)
    state.participants[node] = 0
    if len(state.participants) == settings.min_nodes:
        state.deadline = time.time() + settings.timeout.last_call.total_seconds()
    if len(state.participants) == settings.max_nodes:
        _mark_complete(state)


def _admit(state: RendezvousState, node: str, settings: RendezvousSettings) -> None:
    """Admit ``node`` (not in any list) as the join operation would decide for itself."""
    if not state.complete:
        _add_participant(state, node, settings)
    elif len(state.participants) < settings.max_nodes:
        state.wait_list.append(node)
    else:
        state.redundancy_list.append(node)


def _missing_participants(state: RendezvousState) -> int:
    """Participants of a complete round that were removed (dead or left)."""
    return max(0, state.world_size - len(state.participants)) if state.complete else 0


# --------------------------------------------------------------------------------------------
# Liveness: where keep-alives go and how dead nodes are found


class _Liveness(ABC):
    writes_state: bool

    @abstractmethod
    def beat(self, node: str, state: RendezvousState) -> None:
        """Record a keep-alive of ``node``."""

    @abstractmethod
    def find_dead(self, state: RendezvousState, me: str) -> list[str]:
        """Return nodes of ``state`` that this node should declare dead."""

    def forget(self, node: str) -> None:  # noqa: B027 - optional
        """Drop the liveness record of ``node``."""


class _TrackerLiveness(_Liveness):
    """Keep-alives in the backend's per-node records; each node watches its ring predecessors."""

    writes_state = False
    _BATCH = 2

    def __init__(self, tracker: LivenessTracker, settings: RendezvousSettings) -> None:
        self._tracker = tracker
        self._settings = settings
        self._ring_of: RendezvousState | None = None
        self._ring: list[str] = []

    def beat(self, node: str, state: RendezvousState) -> None:
        self._tracker.keep_alive(node, self._settings.dead_after_s)

    def _predecessors(self, state: RendezvousState, me: str) -> Iterator[str]:
        """The other nodes of ``state`` in ring order (sorted keys), walking back from ``me``.

        The sorted ring is kept per state object, so a sweep costs O(log N) plus the nodes
        it actually asks about.
        """
        if self._ring_of is not state:
            self._ring_of, self._ring = state, sorted(set(state.members()))
        ring = self._ring
        start = bisect.bisect_left(ring, me)
        others = len(ring) - (1 if start < len(ring) and ring[start] == me else 0)
        return (ring[(start - k) % len(ring)] for k in range(1, others + 1))

    def find_dead(self, state: RendezvousState, me: str) -> list[str]:
        predecessors = self._predecessors(state, me)
        dead: list[str] = []
        while batch := list(itertools.islice(predecessors, self._BATCH)):
            ages = self._tracker.heartbeat_ages(batch)
            for node, age in zip(batch, ages, strict=True):
                if age is not None and age <= self._settings.dead_after_s:
                    return dead  # a live predecessor watches the ones before it
                dead.append(node)
        return dead

    def forget(self, node: str) -> None:
        self._tracker.forget_node(node)


class _StateLiveness(_Liveness):
    """torch's scheme, for backends without a tracker: keep-alive times in the shared state."""

    writes_state = True

    def __init__(self, settings: RendezvousSettings) -> None:
        self._settings = settings

    def beat(self, node: str, state: RendezvousState) -> None:
        state.last_heartbeats[node] = time.time()

    def find_dead(self, state: RendezvousState, me: str) -> list[str]:
        expire = time.time() - self._settings.dead_after_s
        return [node for node, beat in state.last_heartbeats.items() if beat < expire and node != me]


# --------------------------------------------------------------------------------------------
# The local copy of the shared state


class _StateHolder:
    """This node's copy of the state, its token, and the read/write (sync) of both."""

    def __init__(self, backend: RendezvousBackend, settings: RendezvousSettings, liveness: _Liveness, node: str, on_dead: Callable[[list[str]], None]) -> None:
        self._backend = backend
        self._settings = settings
        self._liveness = liveness
        self._node = node
        self._on_dead = on_dead
        self.state = RendezvousState(run_id=settings.run_id)
        self.token: Token | None = None
        self.dirty = False
        self.synced = False
        self._dead: set[str] = set()
        self._next_sweep = 0.0
        self._grace_until = 0.0

    def note_outage(self) -> None:
        """The backend was unreachable (or stalled) for this node, so probably for every node:
        their keep-alives failed too. Declare no node dead until each had a full dead-node
        timeout to keep alive again (a frozen server or a fail-over is not a dead node)."""
        self._grace_until = time.monotonic() + self._settings.dead_after_s

    def call(self, fn: Callable[[], _T]) -> _T:
        """Run one backend call; a connection error, or a call slower than a keep-alive
        interval, counts as an outage (:meth:`note_outage`)."""
        started = time.monotonic()
        try:
            result = fn()
        except RendezvousConnectionError:
            self.note_outage()
            raise
        if time.monotonic() - started > self._settings.interval_s:
            self.note_outage()
        return result

    def sync(self) -> bool | None:
        """Write the local state when dirty, else read; return ``has_set`` (``None`` on a read)."""
        has_set: bool | None
        if self.dirty:
            encoded, token = encode_state(self.state), self.token
            response = self.call(lambda: self._backend.set_state(encoded, token))
            has_set = bool(response and response[2])
            current = None if response is None else (response[0], response[1])
        else:
            has_set = None
            current = self.call(self._backend.get_state)
        if current is None:
            self.state, self.token = RendezvousState(run_id=self._settings.run_id), None
        else:
            self.state, self.token = decode_state(current[0], self._settings.run_id), current[1]
        self.dirty = False
        self.synced = True
        if has_set:
            self._dead.clear()
        self._sanitize()
        return has_set

    def _sanitize(self) -> None:
        now = time.monotonic()
        if (self._liveness.writes_state or now >= self._next_sweep) and now >= self._grace_until:
            self._next_sweep = now + self._settings.interval_s
            found = [n for n in self._liveness.find_dead(self.state, self._node) if n not in self._dead]
            if found:
                self._dead.update(found)
                self._on_dead(found)
        present = [n for n in self._dead if self.state.has_member(n) or n in self.state.last_heartbeats]
        if present:
            _remove_nodes(self.state, present, self._settings)
            self.dirty = True

    def check_dead(self) -> bool:
        """Sweep for dead nodes on the cached state; return whether some must be removed."""
        self._next_sweep = 0.0
        self._sanitize()
        return self.dirty

    def changed(self) -> bool:
        """Whether the backend's state may differ from the local copy."""
        if not self.synced or self.dirty:
            return True
        if isinstance(self._backend, ChangeNotifier):
            try:
                return self._backend.wait_for_change(self.token, 0)
            except RendezvousConnectionError:
                return True  # only a hint: the read that follows retries for the full budget
        return True


# --------------------------------------------------------------------------------------------
# Operations: look at the state, return the next action


@dataclass
class _Context:
    node: str
    state: RendezvousState
    settings: RendezvousSettings
    keep_alive_due: bool


def _keep_alive_or_sync(ctx: _Context) -> _Action:
    return _Action.KEEP_ALIVE if ctx.keep_alive_due else _Action.SYNC


def _join_op(ctx: _Context, deadline: float) -> _Action:
    state, node, settings = ctx.state, ctx.node, ctx.settings
    if state.closed:
        return _Action.ERROR_GRACEFUL_EXIT if node in state.redundancy_list else _Action.ERROR_CLOSED
    if node in state.redundancy_list:
        # No timeout here: a redundant node waits as long as the round is full.
        if len(state.participants) >= settings.max_nodes:
            return _keep_alive_or_sync(ctx)
        return _Action.REMOVE_FROM_REDUNDANCY_LIST
    is_participant = node in state.participants
    if state.complete and is_participant:
        return _Action.FINISH
    now = time.monotonic()
    if now > deadline:
        if now <= deadline + _ROLLBACK_PERIOD:
            if is_participant:
                return _Action.REMOVE_FROM_PARTICIPANTS
            if node in state.wait_list:
                return _Action.REMOVE_FROM_WAIT_LIST
        return _Action.ERROR_TIMEOUT
    if state.complete:
        if len(state.participants) < settings.max_nodes:
            if node not in state.wait_list:
                return _Action.ADD_TO_WAIT_LIST
        else:  # full: a wait-listed node left out of the new round moves on too
            return _Action.ADD_TO_REDUNDANCY_LIST
    elif is_participant:
        if len(state.participants) >= settings.min_nodes and state.deadline is not None and time.time() >= state.deadline:
            return _Action.MARK_RENDEZVOUS_COMPLETE
    else:
        return _Action.ADD_TO_PARTICIPANTS
    return _keep_alive_or_sync(ctx)


def _exit_op(ctx: _Context, deadline: float) -> _Action:
    if ctx.node in ctx.state.participants:
        return _Action.ERROR_TIMEOUT if time.monotonic() > deadline else _Action.REMOVE_FROM_PARTICIPANTS
    return _Action.FINISH


def _close_op(ctx: _Context, deadline: float) -> _Action:
    if ctx.state.closed:
        return _Action.FINISH
    return _Action.ERROR_TIMEOUT if time.monotonic() > deadline else _Action.MARK_RENDEZVOUS_CLOSED


def _keep_alive_op(ctx: _Context, deadline: float) -> _Action:
    if not ctx.keep_alive_due:
        return _Action.FINISH
    return _Action.ERROR_TIMEOUT if time.monotonic() > deadline else _Action.KEEP_ALIVE


def _flush_op(ctx: _Context, deadline: float) -> _Action:
    """Finish once pending local changes (dead-node removals) are written."""
    return _Action.FINISH


_Op = Callable[[_Context, float], _Action]
_ADMISSIONS = frozenset({_Action.ADD_TO_PARTICIPANTS, _Action.ADD_TO_WAIT_LIST, _Action.ADD_TO_REDUNDANCY_LIST})


# --------------------------------------------------------------------------------------------
# The executor: runs an operation until it finishes


class _OpExecutor:
    def __init__(self, node: NodeDesc, settings: RendezvousSettings, holder: _StateHolder, backend: RendezvousBackend, liveness: _Liveness, emit: Callable[..., None]) -> None:
        self._node = node
        self._key = node.key
        self._settings = settings
        self._holder = holder
        self._backend = backend
        self._liveness = liveness
        self._emit = emit
        self._last_beat = float("-inf")
        self._last_beat_wall: float | None = None  # the last keep-alive written into the state
        self._poll_interval = _POLL_MIN
        self._queue = backend if isinstance(backend, JoinQueue) else None
        self._queued_at: float | None = None
        self._fallback = _FALLBACK

    def keep_alive_due(self) -> bool:
        if self._last_beat_wall is not None and self._holder.state.last_heartbeats.get(self._key, float("-inf")) < self._last_beat_wall:
            return True  # the last keep-alive is not in the shared state (a lost compare-and-set)
        return time.monotonic() - self._last_beat >= self._settings.interval_s

    def run(self, op: _Op, deadline: float) -> None:
        """Run ``op`` until it returns FINISH.

        Raises:
            RendezvousClosedError, RendezvousTimeoutError, RendezvousGracefulExitError: as the
                operation decides. Backend errors propagate.
        """
        holder = self._holder
        lost = 0
        self._poll_interval = _POLL_MIN
        self._queued_at = None
        while True:
            has_set = holder.sync()
            if has_set is False:
                lost += 1
                if not holder.dirty:
                    self._backoff(lost, deadline)
            if self._queued_at is not None and holder.state.has_member(self._key):
                self._queued_at = None  # admitted: if removed later (declared dead), enqueue again
            action = op(_Context(self._key, holder.state, self._settings, self.keep_alive_due()), deadline)
            if action is _Action.FINISH:
                if holder.dirty:
                    continue  # write pending dead-node removals first
                return
            if action is _Action.ERROR_CLOSED:
                raise RendezvousClosedError(f"The rendezvous '{self._settings.run_id}' is closed.")
            if action is _Action.ERROR_TIMEOUT:
                raise RendezvousTimeoutError(f"The rendezvous operation of node '{self._key}' in run '{self._settings.run_id}' did not complete in time.")
            if action is _Action.ERROR_GRACEFUL_EXIT:
                raise RendezvousGracefulExitError(f"The rendezvous '{self._settings.run_id}' is closed; the redundant node '{self._key}' exits.")
            if action is _Action.SYNC:
                if not holder.dirty:
                    self._wait(deadline)
                continue
            if action in _ADMISSIONS and self._queue is not None and not holder.dirty and not holder.state.has_member(self._key):
                self._join_through_queue(self._queue, deadline)
                continue
            self._apply(action)

    def _apply(self, action: _Action) -> None:
        state, node, settings = self._holder.state, self._key, self._settings
        if action is _Action.KEEP_ALIVE:
            self._beat()
            if not self._liveness.writes_state:
                return  # nothing of the shared state changed
        elif action is _Action.ADD_TO_PARTICIPANTS:
            self._beat()
            _add_participant(state, node, settings)
        elif action is _Action.ADD_TO_WAIT_LIST:
            self._beat()
            state.wait_list.append(node)
        elif action is _Action.ADD_TO_REDUNDANCY_LIST:
            self._beat()
            if node in state.wait_list:
                state.wait_list.remove(node)
            state.redundancy_list.append(node)
        elif action in (_Action.REMOVE_FROM_PARTICIPANTS, _Action.REMOVE_FROM_WAIT_LIST, _Action.REMOVE_FROM_REDUNDANCY_LIST):
            _remove_nodes(state, [node], settings)
        elif action is _Action.MARK_RENDEZVOUS_COMPLETE:
            _mark_complete(state)
        elif action is _Action.MARK_RENDEZVOUS_CLOSED:
            state.closed = True
        self._holder.dirty = True

    def _join_through_queue(self, queue: JoinQueue, deadline: float) -> None:
        """Enqueue this node; the head of the queue admits everyone queued (see module doc)."""
        if self._queued_at is None:
            self._beat()
            position = queue.enqueue_join(self._key)
            self._queued_at = time.monotonic()
            # Admitting a long queue takes a while: the further back, the longer to wait
            # before taking over from a head that may have died.
            self._fallback = _GATHER_MAX + _FALLBACK * random.uniform(1.0, 2.0) + position * _FALLBACK_PER_NODE
            if position == 1:
                self._gather(queue, deadline)
                self._admit_queue(queue, deadline)
                return
        waited = time.monotonic() - self._queued_at
        fallback = self._fallback
        if waited >= fallback:
            self._admit_queue(queue, deadline)
            self._queued_at = time.monotonic()
            return
        self._wait(min(deadline, time.monotonic() + fallback - waited))

    def _gather(self, queue: JoinQueue, deadline: float) -> None:
        """Let a burst of joins gather: return once the queue stopped growing for _SETTLE
        seconds, holds as many nodes as the round has room for, or _GATHER_MAX passed."""
        state = self._holder.state
        room = self._settings.max_nodes - len(state.participants) if not state.complete else 1
        stop = min(deadline, time.monotonic() + _GATHER_MAX)
        count = queue.pending_join_count()
        while count < room and time.monotonic() < stop:
            time.sleep(_SETTLE)
            previous, count = count, queue.pending_join_count()
            if count == previous:
                return

    def _admit_queue(self, queue: JoinQueue, deadline: float) -> None:
        """Admit every queued node with compare-and-set until the queue is empty."""
        holder = self._holder
        lost = 0
        while time.monotonic() < deadline:
            pending = queue.pending_joins()
            if not pending:
                return
            state = holder.state
            known = set(state.members())
            new = [node for node in dict.fromkeys(pending) if node not in known]
            if state.closed:
                return  # the queued nodes see the closed state and fail
            for node in new:
                _admit(state, node, self._settings)
                if self._liveness.writes_state:
                    self._liveness.beat(node, state)
            holder.dirty = bool(new)
            if new and not holder.sync():
                lost += 1
                self._backoff(lost, deadline)
                continue
            queue.ack_joins(pending)
            if new:
                logger.debug("The node '%s' admitted %d queued nodes into round %d of '%s'.", self._key, len(new), holder.state.round, self._settings.run_id)

    def _beat(self) -> None:
        self._liveness.beat(self._key, self._holder.state)
        self._last_beat = time.monotonic()
        if self._liveness.writes_state:
            self._last_beat_wall = self._holder.state.last_heartbeats.get(self._key)

    def _backoff(self, lost: int, deadline: float) -> None:
        """Jittered exponential backoff after a lost compare-and-set (spreads a burst of joins)."""
        delay = random.uniform(0, min(_BACKOFF_CAP, 0.001 * (2 ** min(lost, 10))))
        time.sleep(max(0.0, min(delay, deadline - time.monotonic())))

    def _wake_after(self, deadline: float) -> float:
        """Seconds until something is due: the deadline, a keep-alive, or the last call."""
        now = time.monotonic()
        due = [deadline - now, self._last_beat + self._settings.interval_s - now]
        state = self._holder.state
        if not state.complete and state.deadline is not None and self._key in state.participants:
            # The first node (by key) completes the round at the deadline; the others a little
            # later, in case it died, so that not all of them race to write the same change.
            first = min(state.participants) == self._key
            due.append(state.deadline - time.time() + (0 if first else random.uniform(0.05, 0.3)))
        return max(0.001, min(due))

    def _wait(self, deadline: float) -> None:
        """Block until the state changes or something is due (never past ``deadline``)."""
        timeout = self._wake_after(deadline)
        if isinstance(self._backend, ChangeNotifier):
            try:
                self._backend.wait_for_change(self._holder.token, timeout)
                return
            except RendezvousConnectionError:
                # A wait bounded by a short timeout has a short retry budget; it is only a
                # hint. Poll instead: the next read retries for the backend's full budget, so
                # a connection error surfaces only after that, not after a blip.
                self._holder.note_outage()
        time.sleep(min(timeout, random.uniform(0.5, 1.0) * self._poll_interval))
        self._poll_interval = min(_POLL_MAX, self._poll_interval * 2)


# --------------------------------------------------------------------------------------------
# The handler


class DynamicRendezvousHandler(RendezvousHandler):
    """The elastic rendezvous handler over any :class:`RendezvousBackend`.

    Create it with :meth:`from_backend` or :func:`create_handler`. Thread-safe: one lock
    serialises the public methods and the keep-alive thread.
    """

    _node_desc_generator = NodeDescGenerator()

    @classmethod
    def from_backend(
        cls,
        run_id: str,
        store: Store,
        backend: RendezvousBackend,
        min_nodes: int,
        max_nodes: int,
        local_addr: str | None = None,
        timeout: RendezvousTimeout | None = None,
        keep_alive_interval: float = 5,
        keep_alive_max_attempt: int = 3,
    ) -> DynamicRendezvousHandler:
        """Create a handler.

        Args:
            run_id: Run id of the rendezvous.
            store: The store handed out (scoped to run and round) in :class:`RendezvousInfo`.
            backend: Holds the shared state.
            min_nodes, max_nodes: Bounds of a round.
            local_addr: Address this node advertises (default: its FQDN).
            timeout: The :class:`RendezvousTimeout` (default: torch's defaults).
            keep_alive_interval: Seconds between keep-alives (float).
            keep_alive_max_attempt: Missed keep-alives after which a node counts as dead.

        Raises:
            ValueError: invalid bounds, interval or attempts; the message names the value.
        """
        if isinstance(keep_alive_interval, bool) or not isinstance(keep_alive_interval, (int, float)) or keep_alive_interval <= 0:
            raise ValueError(f"The keep-alive interval ('keep_alive_interval') must be a positive number of seconds (got {keep_alive_interval!r}).")
        settings = RendezvousSettings(
            run_id,
            min_nodes,
            max_nodes,
            timeout or RendezvousTimeout(),
            keep_alive_interval=timedelta(seconds=keep_alive_interval),
            keep_alive_max_attempt=keep_alive_max_attempt,
        )
        node = cls._node_desc_generator.generate(local_addr)
        return cls(node, settings, backend.name, store, backend)

    def __init__(self, node: NodeDesc, settings: RendezvousSettings, backend_name: str, store: Store, backend: RendezvousBackend) -> None:
        if not backend_name:
            raise ValueError("The backend name must be a non-empty string.")
        self._this_node = node
        self._settings = settings
        self._backend_name = backend_name
        self._store = store
        self._backend = backend
        self._liveness: _Liveness = _TrackerLiveness(backend, settings) if isinstance(backend, LivenessTracker) else _StateLiveness(settings)
        self._holder = _StateHolder(backend, settings, self._liveness, node.key, self._on_dead_nodes)
        self._executor = _OpExecutor(node, settings, self._holder, backend, self._liveness, self._emit)
        self._lock = threading.RLock()
        self._listeners: list[Callable[[RendezvousEvent], None]] = []
        self._heartbeat_stop: threading.Event | None = None
        self._heartbeat_thread: threading.Thread | None = None
        self._bootstrap_store_info: RendezvousStoreInfo | None = None
        #: The round this node holds a rank in (set by next_rendezvous), else None.
        self._joined_round: int | None = None

    # -- properties -------------------------------------------------------------------------

    @property
    def settings(self) -> RendezvousSettings:
        return self._settings

    @property
    def node(self) -> NodeDesc:
        """This node's identity."""
        return self._this_node

    @property
    def backend(self) -> RendezvousBackend:
        return self._backend

    @property
    def state(self) -> RendezvousState:
        """The last state this node read (a copy is not made; do not modify)."""
        return self._holder.state

    def get_backend(self) -> str:
        return self._backend_name

    def get_run_id(self) -> str:
        return self._settings.run_id

    @property
    def use_agent_store(self) -> bool:
        """``False``: workers bootstrap from ``MASTER_ADDR``/``MASTER_PORT`` (a free port on
        rank 0's address, published in the round's store), not from the agent's store."""
        return False

    # -- events -----------------------------------------------------------------------------

    def add_event_listener(self, listener: Callable[[RendezvousEvent], None]) -> None:
        """Call ``listener(event)`` on every transition of this node (exceptions are logged)."""
        self._listeners.append(listener)

    def _emit(self, name: str, message: str, level: int = logging.INFO, rank: int | None = None, world_size: int | None = None) -> None:
        logger.log(level, message)
        event = RendezvousEvent(name, self._settings.run_id, self._this_node.key, self._holder.state.round, message, rank, world_size)
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                logger.exception("A rendezvous event listener failed on %s", name)

    def _on_dead_nodes(self, nodes: list[str]) -> None:
        self._emit("removed_dead_nodes", f"The node '{self._this_node}' removes dead nodes {nodes[:10]}{' ...' if len(nodes) > 10 else ''} from round {self._holder.state.round} of the rendezvous '{self._settings.run_id}'.")
        for node in nodes:
            self._liveness.forget(node)

    # -- the handler API --------------------------------------------------------------------

    def next_rendezvous(self) -> RendezvousInfo:
        """Leave the current round (if any), join the next, and block until it completes.

        Raises:
            RendezvousClosedError: the rendezvous is closed.
            RendezvousGracefulExitError: this node is redundant and the rendezvous closed.
            RendezvousTimeoutError: no round completed within the join timeout.
            RendezvousConnectionError, RendezvousStateError: from the backend.
        """
        run_id = self._settings.run_id
        self._emit("joining", f"The node '{self._this_node}' attempts to join the next round of the rendezvous '{run_id}'.")
        self._stop_heartbeats()
        self._joined_round = None
        deadline = time.monotonic() + self._settings.timeout.join.total_seconds()
        try:
            with self._lock:
                self._executor.run(_exit_op, deadline)
                self._executor.run(self._join_op_with_events(), deadline)
                state = self._holder.state
                # The size the round completed with: a participant removed since (declared
                # dead) must not shrink it below this node's rank; num_nodes_waiting() now
                # reports the missing node, so the agents re-rendezvous.
                rank, world_size = state.rank_of(self._this_node.key), state.world_size or len(state.participants)
                round_ = self._joined_round = state.round
        except RendezvousTimeoutError as exc:
            self._emit("timed_out", f"The node '{self._this_node}' timed out joining the rendezvous '{run_id}': {exc}", logging.WARNING)
            raise
        except RendezvousGracefulExitError as exc:
            self._emit("graceful_exit", str(exc))
            raise
        except RendezvousError as exc:
            self._emit("error", f"The node '{self._this_node}' failed to join the rendezvous '{run_id}': {type(exc).__name__}: {exc}", logging.WARNING)
            raise
        self._start_heartbeats()
        store = PrefixStore(f"rdzv.{run_id}.{round_}", self._store)
        if rank != 0:
            # Rank 0 publishes the bootstrap address right after the round completes. Wait for
            # it within the join deadline (at least a heartbeat timeout), not the store's own
            # timeout (300 s by default): a rank 0 that died or lost the backend must not hold
            # the others here for minutes.
            wait = max(deadline - time.monotonic(), self._settings.timeout.heartbeat.total_seconds())
            store.wait([RendezvousStoreInfo.MASTER_ADDR_KEY, RendezvousStoreInfo.MASTER_PORT_KEY], min(wait, store.timeout.total_seconds()))
        self._bootstrap_store_info = RendezvousStoreInfo.build(rank, store, local_addr=self._this_node.addr)
        self._emit("completed", f"The node '{self._this_node}' has joined round {round_} of the rendezvous '{run_id}' as rank {rank} in a world of size {world_size}.", rank=rank, world_size=world_size)
        return RendezvousInfo(store, rank, world_size, self._bootstrap_store_info)

    def _join_op_with_events(self) -> _Op:
        announced: set[str] = set()

        def op(ctx: _Context, deadline: float) -> _Action:
            action = _join_op(ctx, deadline)
            kind = {_Action.ADD_TO_WAIT_LIST: "wait list", _Action.ADD_TO_REDUNDANCY_LIST: "redundancy list"}.get(action)
            if kind and kind not in announced:
                announced.add(kind)
                self._emit("waiting", f"The node '{self._this_node}' waits in the {kind} for the next round of the rendezvous '{self._settings.run_id}'.")
            return action

        return op

    def is_closed(self) -> bool:
        """Read the state and return whether the rendezvous is closed."""
        with self._lock:
            self._holder.sync()
            return self._holder.state.closed

    def set_closed(self) -> None:
        """Mark the rendezvous closed (within the close timeout).

        Raises:
            RendezvousTimeoutError: it could not be written in time. Backend errors propagate.
        """
        self._close()

    def _close(self) -> None:
        # Not under self._lock, which a pending next_rendezvous holds until its round completes
        # or times out: closing runs on its own copy of the state (compare-and-set keeps it
        # consistent), so it ends that join at once with RendezvousClosedError.
        deadline = time.monotonic() + self._settings.timeout.close.total_seconds()
        holder = _StateHolder(self._backend, self._settings, self._liveness, self._this_node.key, self._on_dead_nodes)
        _OpExecutor(self._this_node, self._settings, holder, self._backend, self._liveness, self._emit).run(_close_op, deadline)
        self._emit("closed", f"The node '{self._this_node}' has closed the rendezvous '{self._settings.run_id}'.")

    def num_nodes_waiting(self) -> int:
        """Return the number of nodes waiting for the next round.

        This counts the wait list, plus the participants of a complete round that have been
        removed (dead or gone): either way the round should re-form. It is at least 1 when the
        round this node holds a rank in no longer exists (the backend lost the state, or the
        others formed a new round without this node): the rank is stale. With a backend that
        has change notification, an unchanged state is served from the local copy.
        """
        with self._lock:
            if self._holder.changed():
                self._holder.sync()
                if self._holder.dirty:
                    self._executor.run(_flush_op, time.monotonic() + self._settings.timeout.heartbeat.total_seconds())
            state = self._holder.state
            waiting = len(state.wait_list) + _missing_participants(state)
            joined = self._joined_round
            if not waiting and joined is not None and not state.closed and (state.round != joined or self._this_node.key not in state.participants):
                return 1
            return waiting

    def shutdown(self) -> bool:
        """Stop keep-alives and close the rendezvous (as torch's handler does).

        Returns:
            ``True`` when closed; ``False`` (and a warning) when the backend failed.
        """
        self._stop_heartbeats()
        try:
            self._close()
            return True
        except RendezvousError as exc:
            logger.warning("The node '%s' has failed to shut down the rendezvous '%s': %s: %s", self._this_node, self._settings.run_id, type(exc).__name__, exc)
            return False

    # -- keep-alives ------------------------------------------------------------------------

    def _keep_alive_tick(self) -> None:
        deadline = time.monotonic() + self._settings.timeout.heartbeat.total_seconds()
        with self._lock:
            if self._liveness.writes_state:
                self._executor.run(_keep_alive_op, deadline)
                return
            self._holder.call(lambda: self._liveness.beat(self._this_node.key, self._holder.state))
            if self._holder.check_dead():
                self._executor.run(_flush_op, deadline)

    def _heartbeat_loop(self, stop: threading.Event) -> None:
        # The first tick comes after half an interval (jittered): the join's last keep-alive is
        # at most an interval old, so a node is never silent for more than 1.5 intervals, and
        # the N keep-alives and sweeps of a large round do not all hit the moment it completes.
        delay = self._settings.interval_s * random.uniform(0.4, 0.6)
        while not stop.wait(delay):
            try:
                self._keep_alive_tick()
            except Exception as exc:
                logger.warning("The keep-alive of node '%s' in the rendezvous '%s' failed: %s: %s", self._this_node, self._settings.run_id, type(exc).__name__, exc)
            delay = self._settings.interval_s

    def _start_heartbeats(self) -> None:
        self._stop_heartbeats()
        stop = threading.Event()
        thread = threading.Thread(target=self._heartbeat_loop, args=(stop,), name=f"rdzv-keep-alive-{self._this_node.local_id}", daemon=True)
        self._heartbeat_stop, self._heartbeat_thread = stop, thread
        thread.start()

    def _stop_heartbeats(self) -> None:
        stop, thread = self._heartbeat_stop, self._heartbeat_thread
        self._heartbeat_stop = self._heartbeat_thread = None
        if stop is not None:
            stop.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(self._settings.timeout.heartbeat.total_seconds() + self._settings.interval_s)


def _positive_seconds(params: RendezvousParameters, key: str) -> float | None:
    value = params.get_as_float(key)
    if value is not None and value <= 0:
        raise ValueError(f"The rendezvous configuration option '{key}' must be a positive number of seconds (got {params.get(key)!r}).")
    return value


def _timedelta_or_none(seconds: float | None) -> timedelta | None:
    return None if seconds is None else timedelta(seconds=seconds)


def create_handler(store: Store, backend: RendezvousBackend, params: RendezvousParameters) -> DynamicRendezvousHandler:
    """Create a :class:`DynamicRendezvousHandler` from ``params``.

    +------------------------+------------------------------------------------------------+
    | key                    | meaning (seconds unless said otherwise)                    |
    +========================+============================================================+
    | join_timeout           | time for a round to complete; default 600                  |
    | last_call_timeout      | wait after min_nodes joined before completing; default 30  |
    | close_timeout          | time to mark the rendezvous closed; default 30             |
    | heartbeat_timeout      | time for one keep-alive; default 5                         |
    | keep_alive_interval    | seconds between keep-alives; default 5                     |
    | keep_alive_max_attempt | missed keep-alives before a node is dead (int); default 3  |
    +------------------------+------------------------------------------------------------+

    Raises:
        ValueError: a value is not a positive number (or int); the message names the key.
    """
    timeout = RendezvousTimeout(
        join=_timedelta_or_none(_positive_seconds(params, "join_timeout")),
        last_call=_timedelta_or_none(_positive_seconds(params, "last_call_timeout")),
        close=_timedelta_or_none(_positive_seconds(params, "close_timeout")),
        heartbeat=_timedelta_or_none(_positive_seconds(params, "heartbeat_timeout")),
    )
    interval = _positive_seconds(params, "keep_alive_interval") or 5.0
    attempts = params.get_as_int("keep_alive_max_attempt", 3)
    if attempts is None or attempts < 1:
        raise ValueError(f"The rendezvous configuration option 'keep_alive_max_attempt' must be an integer >= 1 (got {params.get('keep_alive_max_attempt')!r}).")
    return DynamicRendezvousHandler.from_backend(
        params.run_id,
        store,
        backend,
        params.min_nodes,
        params.max_nodes,
        params.local_addr,
        timeout,
        keep_alive_interval=interval,
        keep_alive_max_attempt=attempts,
    )
