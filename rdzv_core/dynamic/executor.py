"""The state-based executor: a node's copy of the shared state, read and written with
compare-and-set, and the loop that runs an operation until it finishes.

Used with backends that offer torch's plain contract (optionally with change notification,
liveness records and a join queue); backends with
:class:`~rdzv_core.backend.AtomicMembership` use :mod:`rdzv_core.dynamic.membership`.

* A failed compare-and-set uses the state the backend returned (no extra read) and backs off
  with jitter.
* With a :class:`~rdzv_core.backend.JoinQueue`, a joining node enqueues itself; the node at
  the head of the queue waits for the burst to settle and admits every queued node with one
  compare-and-set. A queued node re-enqueues (idempotent) every keep-alive interval and when
  the state vanished, so a queue entry the server lost never strands it.
* Waiting nodes block on the backend's change notification when it has one; otherwise they
  poll with a short, jittered, growing interval (10 ms to 250 ms).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

from rdzv_core.api import (
    RendezvousClosedError,
    RendezvousConnectionError,
    RendezvousGracefulExitError,
    RendezvousTimeoutError,
)
from rdzv_core.backend import ChangeNotifier, JoinQueue, RendezvousBackend, Token
from rdzv_core.dynamic.clock import SYSTEM_CLOCK, Clock
from rdzv_core.dynamic.liveness import _Liveness
from rdzv_core.dynamic.ops import (
    _ADMISSIONS,
    _Action,
    _add_participant,
    _admit,
    _Context,
    _mark_complete,
    _Op,
    _remove_nodes,
)
from rdzv_core.dynamic.outage import OutageGuard
from rdzv_core.dynamic.settings import RendezvousSettings, closed_message
from rdzv_core.state import NodeDesc, RendezvousState, decode_state, encode_state

logger = logging.getLogger("rdzv_core.dynamic")
_T = TypeVar("_T")

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


class _StateHolder:
    """This node's copy of the state, its token, and the read/write (sync) of both."""

    def __init__(
        self,
        backend: RendezvousBackend,
        settings: RendezvousSettings,
        liveness: _Liveness,
        node: str,
        on_dead: Callable[[list[str]], None],
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._backend = backend
        self._clock = clock
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
        self._guard = OutageGuard(settings, clock)

    def note_outage(self) -> None:
        """See :meth:`OutageGuard.note_outage`."""
        self._guard.note_outage()

    def call(self, fn: Callable[[], _T]) -> _T:
        """Run one backend call through the :class:`OutageGuard`."""
        return self._guard.call(fn)

    def sync(self) -> bool | None:
        """Write the local state when dirty, else read; return ``has_set`` (``None`` on a read)."""
        has_set: bool | None
        if self.dirty:
            spec = self._settings.round_spec()  # shown by rdzv status
            self.state.min_nodes, self.state.max_nodes = spec.min_nodes, spec.max_nodes
            self.state.last_call_timeout = spec.last_call
            encoded, token = encode_state(self.state), self.token
            response = self.call(lambda: self._backend.set_state(encoded, token))
            has_set = bool(response and response[2])
            current = None if response is None else (response[0], response[1])
        else:
            has_set = None
            current = self.call(self._backend.get_state)
        if current is None:
            if self.token is not None:
                # The state vanished (the server lost its data, or the keys expired): so did the
                # keep-alive records, which is no sign of death. Forget this node's verdicts and
                # sweep no one until every node had a dead-node timeout to keep alive again.
                self._dead.clear()
                self._guard.note_outage()
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
        now = self._clock.monotonic()
        if (self._liveness.writes_state or now >= self._next_sweep) and self._guard.may_sweep:
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


class _OpExecutor:
    def __init__(
        self,
        node: NodeDesc,
        settings: RendezvousSettings,
        holder: _StateHolder,
        backend: RendezvousBackend,
        liveness: _Liveness,
        emit: Callable[..., None],
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._clock = clock
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
        self._queued_with: Token | None = None
        self._checked_at = float("-inf")
        self._fallback = _FALLBACK

    def context(self) -> _Context:
        """The :class:`_Context` of this node now (its state copy and the clock's times)."""
        return _Context(
            self._key,
            self._holder.state,
            self._settings,
            self.keep_alive_due(),
            self._clock.monotonic(),
            self._clock.time(),
        )

    def keep_alive_due(self) -> bool:
        if (
            self._last_beat_wall is not None
            and self._holder.state.last_heartbeats.get(self._key, float("-inf")) < self._last_beat_wall
        ):
            return True  # the last keep-alive is not in the shared state (a lost compare-and-set)
        return self._clock.monotonic() - self._last_beat >= self._settings.interval_s

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
            action = op(self.context(), deadline)
            if action is _Action.FINISH:
                if holder.dirty:
                    continue  # write pending dead-node removals first
                return
            if action is _Action.ERROR_CLOSED:
                raise RendezvousClosedError(closed_message(self._settings.run_id))
            if action is _Action.ERROR_TIMEOUT:
                raise RendezvousTimeoutError(
                    f"The rendezvous operation of node '{self._key}' in run '{self._settings.run_id}' did not complete in time."
                )
            if action is _Action.ERROR_GRACEFUL_EXIT:
                raise RendezvousGracefulExitError(
                    f"The rendezvous '{self._settings.run_id}' is closed; the redundant node '{self._key}' exits."
                )
            if action is _Action.SYNC:
                if not holder.dirty:
                    self._wait(deadline)
                continue
            if (
                action in _ADMISSIONS
                and self._queue is not None
                and not holder.dirty
                and not holder.state.has_member(self._key)
            ):
                self._join_through_queue(self._queue, deadline)
                continue
            self._apply(action)
            if action is _Action.REMOVE_FROM_REDUNDANCY_LIST:
                # Room appeared: the node joins the next round with a fresh join deadline
                # (torch's semantics; it may have waited as a spare longer than the timeout).
                deadline = self._clock.monotonic() + self._settings.join_s

    def _apply(self, action: _Action) -> None:
        state, node, settings = self._holder.state, self._key, self._settings
        if action is _Action.KEEP_ALIVE:
            self._beat()
            if not self._liveness.writes_state:
                return  # nothing of the shared state changed
        elif action is _Action.ADD_TO_PARTICIPANTS:
            self._beat()
            _add_participant(state, node, settings, self._clock.time())
        elif action is _Action.ADD_TO_WAIT_LIST:
            self._beat()
            state.wait_list.append(node)
        elif action is _Action.ADD_TO_REDUNDANCY_LIST:
            self._beat()
            if node in state.wait_list:
                state.wait_list.remove(node)
            state.redundancy_list.append(node)
        elif action in (
            _Action.REMOVE_FROM_PARTICIPANTS,
            _Action.REMOVE_FROM_WAIT_LIST,
            _Action.REMOVE_FROM_REDUNDANCY_LIST,
        ):
            _remove_nodes(state, [node], settings)
        elif action is _Action.MARK_RENDEZVOUS_COMPLETE:
            _mark_complete(state)
        elif action is _Action.MARK_RENDEZVOUS_CLOSED:
            state.closed = True
        self._holder.dirty = True

    def _join_through_queue(self, queue: JoinQueue, deadline: float) -> None:
        """Enqueue this node; the head of the queue admits everyone queued (see module doc).

        A queued node re-checks its own place every keep-alive interval, and at once when the
        state vanished: enqueuing again is idempotent and O(1), and puts back an entry the
        server lost (a node that then finds itself at the head admits the queue). A node not
        admitted within its fallback time admits the queue itself (the head may have died).
        """
        now = self._clock.monotonic()
        vanished = self._queued_with is not None and self._holder.token is None
        if self._queued_at is None or vanished or now - self._checked_at >= self._settings.interval_s:
            first = self._queued_at is None or vanished
            self._beat()
            position = queue.enqueue_join(self._key)
            self._checked_at = now
            if first:
                self._queued_at = now
                self._queued_with = self._holder.token  # a state that later vanishes took the queue along
                # Admitting a long queue takes a while: the further back, the longer to wait
                # before taking over from a head that may have died.
                self._fallback = _GATHER_MAX + _FALLBACK * self._clock.uniform(1.0, 2.0) + position * _FALLBACK_PER_NODE
            if position == 1:
                self._gather(queue, deadline)
                self._admit_queue(queue, deadline)
                return
        assert self._queued_at is not None
        if now - self._queued_at >= self._fallback:
            self._admit_queue(queue, deadline)
            self._queued_at = self._clock.monotonic()
            return
        self._wait(min(deadline, self._queued_at + self._fallback, self._checked_at + self._settings.interval_s))

    def _gather(self, queue: JoinQueue, deadline: float) -> None:
        """Let a burst of joins gather: return once the queue stopped growing for _SETTLE
        seconds, holds as many nodes as the round has room for, or _GATHER_MAX passed."""
        state = self._holder.state
        room = self._settings.max_nodes - len(state.participants) if not state.complete else 1
        stop = min(deadline, self._clock.monotonic() + _GATHER_MAX)
        count = queue.pending_join_count()
        while count < room and self._clock.monotonic() < stop:
            self._clock.sleep(_SETTLE)
            previous, count = count, queue.pending_join_count()
            if count == previous:
                return

    def _admit_queue(self, queue: JoinQueue, deadline: float) -> None:
        """Admit every queued node with compare-and-set until the queue is empty."""
        holder = self._holder
        lost = 0
        while self._clock.monotonic() < deadline:
            pending = queue.pending_joins()
            if not pending:
                return
            state = holder.state
            known = set(state.members())
            new = [node for node in dict.fromkeys(pending) if node not in known]
            if state.closed:
                return  # the queued nodes see the closed state and fail
            for node in new:
                _admit(state, node, self._settings, self._clock.time())
                if self._liveness.writes_state:
                    self._liveness.beat(node, state)
            holder.dirty = bool(new)
            if new and not holder.sync():
                lost += 1
                self._backoff(lost, deadline)
                continue
            queue.ack_joins(pending)
            if new:
                logger.debug(
                    "The node '%s' admitted %d queued nodes into round %d of '%s'.",
                    self._key,
                    len(new),
                    holder.state.round,
                    self._settings.run_id,
                )

    def _beat(self) -> None:
        self._liveness.beat(self._key, self._holder.state)
        self._last_beat = self._clock.monotonic()
        if self._liveness.writes_state:
            self._last_beat_wall = self._holder.state.last_heartbeats.get(self._key)

    def _backoff(self, lost: int, deadline: float) -> None:
        """Jittered exponential backoff after a lost compare-and-set (spreads a burst of joins)."""
        delay = self._clock.uniform(0, min(_BACKOFF_CAP, 0.001 * (2 ** min(lost, 10))))
        self._clock.sleep(max(0.0, min(delay, deadline - self._clock.monotonic())))

    def _wake_after(self, deadline: float) -> float:
        """Seconds until something is due: the deadline, a keep-alive, or the last call."""
        now = self._clock.monotonic()
        due = [deadline - now, self._last_beat + self._settings.interval_s - now]
        state = self._holder.state
        if not state.complete and state.deadline is not None and self._key in state.participants:
            # The first node (by key) completes the round at the deadline; the others a little
            # later, in case it died, so that not all of them race to write the same change.
            first = min(state.participants) == self._key
            due.append(state.deadline - self._clock.time() + (0 if first else self._clock.uniform(0.05, 0.3)))
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
        self._clock.sleep(min(timeout, self._clock.uniform(0.5, 1.0) * self._poll_interval))
        self._poll_interval = min(_POLL_MAX, self._poll_interval * 2)
