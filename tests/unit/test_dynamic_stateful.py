"""The rendezvous state machine, driven by hypothesis one action at a time.

Several nodes share one HashStore backend; a single thread steps them in any order, so every
interleaving of reads, lost compare-and-sets, joins, exits, deaths, timeouts and closes that
hypothesis picks is replayed exactly (the clock is fake). Each step is what one iteration of
``_OpExecutor.run`` does: sync, decide the next action with the operation, apply it, write it.

Invariants checked against the backend after every step:

* a complete round has ranks exactly ``0..W-1`` when it completes (later, removed participants
  leave gaps, but ranks stay distinct, below ``W`` and in the sorted order of the keys);
* ``min_nodes <= W <= max_nodes``; an incomplete round has fewer than ``max_nodes`` participants;
* a node is in at most one of participants / wait list / redundancy list;
* closed stays closed; the round number never decreases;
* nodes that completed the same round got distinct ranks of the same world size.
"""

from __future__ import annotations

import types
from dataclasses import dataclass
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from rdzv_core import store_backend
from rdzv_core.backend import RendezvousBackend
from rdzv_core.dynamic import Clock, RendezvousSettings, RendezvousTimeout
from rdzv_core.dynamic.executor import _OpExecutor, _StateHolder
from rdzv_core.dynamic.liveness import _StateLiveness, _TrackerLiveness
from rdzv_core.dynamic.ops import (
    _Action,
    _close_op,
    _exit_op,
    _join_op,
    _keep_alive_op,
    _missing_participants,
)
from rdzv_core.state import NodeDesc, decode_state
from rdzv_core.store import HashStore
from rdzv_core.store_backend import StoreRendezvousBackend
from tests.backends import StateOnlyBackend

pytestmark = pytest.mark.unit

RUN = "stateful"
NODES = 5
MIN_NODES, MAX_NODES = 2, 3
ERRORS = {_Action.ERROR_CLOSED, _Action.ERROR_TIMEOUT, _Action.ERROR_GRACEFUL_EXIT}


class FakeClock(Clock):
    """Wall clock and monotonic clock that move only when told to; jitter is the midpoint."""

    def __init__(self) -> None:
        self.wall = 1_700_000_000.0
        self.mono = 10_000.0

    def time(self) -> float:
        return self.wall

    def monotonic(self) -> float:
        return self.mono

    def sleep(self, seconds: float) -> None:
        self.advance(max(0.0, seconds))

    def uniform(self, low: float, high: float) -> float:
        return (low + high) / 2

    def advance(self, seconds: float) -> None:
        self.wall += seconds
        self.mono += seconds


@dataclass
class Node:
    key: str
    holder: _StateHolder
    executor: _OpExecutor
    liveness: object
    mode: str = "idle"  # idle | exiting | joining | member | dead
    deadline: float = 0.0


class RendezvousMachine(RuleBasedStateMachine):
    kind = "tracker"

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        fake_time = types.SimpleNamespace(time=self.clock.time, monotonic=self.clock.monotonic, sleep=self.clock.sleep)
        self._saved = store_backend.time
        store_backend.time = fake_time  # the tracker's records (the "server" clock)
        self.settings = RendezvousSettings(
            RUN,
            MIN_NODES,
            MAX_NODES,
            RendezvousTimeout(
                join=timedelta(seconds=20),
                last_call=timedelta(seconds=1),
                close=timedelta(seconds=10),
                heartbeat=timedelta(seconds=5),
            ),
            keep_alive_interval=timedelta(seconds=1),
            keep_alive_max_attempt=2,
        )
        self.store = HashStore(timeout=1)
        self.observer = StoreRendezvousBackend(self.store, RUN)
        self.nodes = [self._make_node(i) for i in range(NODES)]
        self.max_round = 0
        self.seen_closed = False
        self.seen_complete_rounds: set[int] = set()
        self.completions: dict[int, dict[str, tuple[int, int]]] = {}

    def teardown(self) -> None:
        store_backend.time = self._saved

    def _make_node(self, i: int) -> Node:
        inner = StoreRendezvousBackend(self.store, RUN)
        backend: RendezvousBackend = inner if self.kind == "tracker" else StateOnlyBackend(inner)
        liveness = (
            _TrackerLiveness(inner, self.settings)
            if self.kind == "tracker"
            else _StateLiveness(self.settings, self.clock)
        )
        desc = NodeDesc("node", 1, i)

        def on_dead(nodes: list[str]) -> None:
            for node in nodes:
                liveness.forget(node)

        holder = _StateHolder(backend, self.settings, liveness, desc.key, on_dead, self.clock)
        executor = _OpExecutor(desc, self.settings, holder, backend, liveness, lambda *args, **kwargs: None, self.clock)
        return Node(desc.key, holder, executor, liveness)

    # -- one iteration of _OpExecutor.run ---------------------------------------------------

    def _sync(self, node: Node) -> None:
        """One read or compare-and-set of ``node``; the invariants hold after every write."""
        node.holder.sync()
        self.shared_state_is_consistent()

    def _step(self, node: Node, op) -> _Action:
        holder = node.holder
        self._sync(node)  # read, or write pending dead-node removals
        action = op(node.executor.context(), node.deadline)
        if action in ERRORS:
            return action
        if action in (_Action.FINISH, _Action.SYNC):
            if holder.dirty:
                self._sync(node)
                return _Action.SYNC  # run() re-decides after writing pending changes
            return action
        node.executor._apply(action)
        if holder.dirty:
            self._sync(node)
        return action

    def _keep_alive(self, node: Node) -> None:
        """What the keep-alive thread does once (``_keep_alive_tick``)."""
        node.deadline = self.clock.monotonic() + self.settings.timeout.heartbeat.total_seconds()
        if isinstance(node.liveness, _StateLiveness):
            self._step(node, _keep_alive_op)
            return
        node.liveness.beat(node.key, node.holder.state)
        node.executor._last_beat = self.clock.monotonic()
        if node.holder.check_dead():
            self._sync(node)

    # -- rules ------------------------------------------------------------------------------

    @rule(i=st.integers(0, NODES - 1))
    def act(self, i: int) -> None:
        """Start a rendezvous (idle), or run one step of what the node is doing."""
        node = self.nodes[i]
        if node.mode == "dead":
            return
        if node.mode == "idle":
            node.mode = "exiting"
            node.deadline = self.clock.monotonic() + self.settings.timeout.join.total_seconds()
        if node.mode == "member":
            self._keep_alive(node)
            return
        op = _exit_op if node.mode == "exiting" else _join_op
        action = self._step(node, op)
        if action in ERRORS:
            event(f"join ended with {action.name}")
            node.mode = "idle"
        elif action is _Action.FINISH:
            if node.mode == "exiting":
                node.mode = "joining"
            else:
                node.mode = "member"
                self._record_completion(node)
                event("a node completed a round")

    @rule(reverse=st.booleans())
    def everyone_acts(self, reverse: bool) -> None:
        """Every node takes one step (in key order or reversed: lost compare-and-sets differ)."""
        for i in reversed(range(NODES)) if reverse else range(NODES):
            self.act(i)

    @rule(i=st.integers(0, NODES - 1))
    def rejoin(self, i: int) -> None:
        """A member calls next_rendezvous again (re-rendezvous)."""
        node = self.nodes[i]
        if node.mode == "member":
            node.mode = "exiting"
            node.deadline = self.clock.monotonic() + self.settings.timeout.join.total_seconds()

    @precondition(lambda self: sum(n.mode == "dead" for n in self.nodes) < 2)
    @rule(i=st.integers(0, NODES - 1))
    def stop_heartbeats(self, i: int) -> None:
        """The node dies: it never reads, writes or beats again."""
        self.nodes[i].mode = "dead"

    @rule(seconds=st.sampled_from([0.1, 0.5, 1.0, 2.5, 6.0]))
    def time_passes(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @precondition(lambda self: bool(self.seen_complete_rounds))  # close late: let rounds form first
    @rule(i=st.integers(0, NODES - 1))
    def close(self, i: int) -> None:
        node = self.nodes[i]
        if node.mode == "dead":
            return
        node.deadline = self.clock.monotonic() + self.settings.timeout.close.total_seconds()
        for _ in range(10):  # one thread: nobody races the close, it finishes in a few steps
            action = self._step(node, _close_op)
            if action is _Action.FINISH:
                break
        else:
            raise AssertionError("closing did not finish")
        self.seen_closed = True
        if node.mode != "member":
            node.mode = "idle"

    @rule(i=st.integers(0, NODES - 1))
    def num_nodes_waiting(self, i: int) -> None:
        """A member asks whether to re-rendezvous (dead-node removals are written first)."""
        node = self.nodes[i]
        if node.mode != "member":
            return
        self._sync(node)
        if node.holder.dirty:
            self._sync(node)
        state = node.holder.state
        waiting = len(state.wait_list) + _missing_participants(state)
        assert waiting >= 0
        if state.complete and len(state.participants) < state.world_size:
            assert waiting > 0

    # -- invariants -------------------------------------------------------------------------

    def _record_completion(self, node: Node) -> None:
        state = node.holder.state
        assert state.complete and node.key in state.participants
        rank, world = state.participants[node.key], state.world_size
        per_round = self.completions.setdefault(state.round, {})
        for other, (other_rank, other_world) in per_round.items():
            if other != node.key:
                assert other_rank != rank, f"two nodes got rank {rank} in round {state.round}"
                assert other_world == world
        per_round[node.key] = (rank, world)
        assert 0 <= rank < world

    @invariant()
    def shared_state_is_consistent(self) -> None:
        current = self.observer.get_state()
        if current is None:
            return
        state = decode_state(current[0], RUN)
        participants = list(state.participants)
        everyone = participants + state.wait_list + state.redundancy_list
        assert len(everyone) == len(set(everyone)), f"a node is in two lists: {state}"

        assert state.round >= self.max_round, "the round number went back"
        if state.round > self.max_round:
            self.max_round = state.round
        if self.seen_closed:
            assert state.closed, "a closed rendezvous re-opened"
        self.seen_closed = self.seen_closed or state.closed

        assert len(state.participants) <= MAX_NODES
        if state.redundancy_list:
            event("a node was redundant")
        if state.complete and len(state.participants) < state.world_size:
            event("a participant of a complete round was removed")
        if state.round:
            event("a new round started")
        if state.complete:
            assert MIN_NODES <= state.world_size <= MAX_NODES
            assert state.deadline is None
            ranks = [state.participants[k] for k in sorted(state.participants)]
            assert ranks == sorted(ranks) and len(set(ranks)) == len(ranks)
            assert all(0 <= r < state.world_size for r in ranks)
            if state.round not in self.seen_complete_rounds:
                # first sight of this round complete: ranks exactly 0..W-1, no gaps
                self.seen_complete_rounds.add(state.round)
                assert ranks == list(range(state.world_size)), f"ranks with gaps at completion: {state}"
        else:
            assert state.world_size == 0
            assert len(state.participants) < MAX_NODES
            # the last call runs exactly while the round has min_nodes or more participants
            assert (state.deadline is not None) == (len(state.participants) >= MIN_NODES), (
                f"last call out of step: {state}"
            )


RendezvousMachine.TestCase.settings = settings(
    max_examples=50,
    stateful_step_count=30,
    deadline=None,
    derandomize=True,  # the same runs every time (CI); explore more with a bigger max_examples locally
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


class StateLivenessMachine(RendezvousMachine):
    kind = "state"


StateLivenessMachine.TestCase.settings = RendezvousMachine.TestCase.settings

TestRendezvousStateMachineTracker = RendezvousMachine.TestCase
TestRendezvousStateMachineStateLiveness = StateLivenessMachine.TestCase
