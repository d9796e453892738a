"""A model of many nodes that drives the real handler and membership executor on a fake clock.

Each model node is a real :class:`DynamicRendezvousHandler` over the ``memory`` backend's
:class:`~rdzv_core.rounds.MemoryMembership` (the server), sharing one fake clock. The model
never re-implements the join loop: it calls the executor's own :meth:`step` and feeds it the
outcome of its :class:`Wait`, calls the handler's own keep-alive tick and
``num_nodes_waiting()``, and acts as an agent does (re-rendezvous when nodes wait). hypothesis
picks the interleaving and the faults:

* time passing (between 10 ms and more than a dead-node timeout),
* a node killed (never acts again) or paused for longer than the dead-node timeout,
* a mass kill (a third of the live nodes) and a mass leave (members re-join at once),
* the server losing its data (a restart without persistence),
* new nodes arriving.

Safety, checked after every step: a node is in at most one list; a complete round has
``min_nodes <= W <= max_nodes`` and distinct ranks below ``W``; an open round has fewer than
``max_nodes`` participants; the round number never decreases within an incarnation; nodes
that got a rank in the same round got distinct ranks of the same world size.

Liveness, checked by :meth:`MembershipModel.settle` (a rule, and at the end): once faults
stop, with every node scheduled fairly, every live node holds a rank in one complete round
within :data:`LIVENESS_BOUND` seconds of model time (when the live nodes can form one).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import event as _event
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from rdzv_core.api import RendezvousError
from rdzv_core.backend import Role
from rdzv_core.dynamic import Clock, DynamicRendezvousHandler, Joined, RendezvousSettings, RendezvousTimeout
from rdzv_core.memory import MemoryRendezvousBackend
from rdzv_core.rounds import MemoryMembership
from rdzv_core.state import NodeDesc
from rdzv_core.store import HashStore

pytestmark = pytest.mark.unit

RUN = "model"
SLOTS = 6
MIN_NODES, MAX_NODES = 2, 4
INTERVAL, ATTEMPTS, LAST_CALL, JOIN = 1.0, 2, 1.0, 60.0
DEAD_AFTER = INTERVAL * ATTEMPTS
#: How often (model seconds) a member's agent asks num_nodes_waiting().
AGENT_POLL = 0.2
#: Every live node holds a rank within this many model seconds once faults stop: a lapse
#: (dead-node timeout), the sweep that notices it (an interval), re-joining and the last call,
#: with an interval of slack for keep-alive phases.
#: Rounds of ticks at one instant after which the model calls it a busy loop.
BUSY_LIMIT = 200
LIVENESS_BOUND = DEAD_AFTER + INTERVAL + LAST_CALL + 2 * INTERVAL


def event(text: str) -> None:
    """hypothesis' event(), also usable outside a hypothesis test (then it does nothing)."""
    try:
        _event(text)
    except InvalidArgument:
        pass


class FakeClock(Clock):
    """Model time: moves only when the model advances it; jitter is the midpoint."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += max(0.0, seconds)

    def uniform(self, low: float, high: float) -> float:
        return (low + high) / 2


@dataclass
class Node:
    handler: DynamicRendezvousHandler
    mode: str = "idle"  # idle | joining | member | dead
    wait_until: float = 0.0
    next_beat: float = 0.0
    next_poll: float = 0.0
    paused_until: float = 0.0
    joined: tuple[str, int] | None = None
    history: list[str] = field(default_factory=list)

    @property
    def key(self) -> str:
        return self.handler.node.key

    @property
    def executor(self):
        return self.handler._membership


class MembershipModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.server = MemoryMembership(RUN, clock=self.clock.time)
        self.store = HashStore(timeout=1)
        self.settings = RendezvousSettings(
            RUN,
            MIN_NODES,
            MAX_NODES,
            RendezvousTimeout(join=timedelta(seconds=JOIN), last_call=timedelta(seconds=LAST_CALL)),
            keep_alive_interval=timedelta(seconds=INTERVAL),
            keep_alive_max_attempt=ATTEMPTS,
        )
        self.ids = iter(range(10_000))
        self.nodes = [self._new_node() for _ in range(SLOTS)]
        self.ranks: dict[tuple[str, int], dict[str, tuple[int, int]]] = {}
        self.rounds: dict[str, int] = {}

    def _new_node(self) -> Node:
        backend = MemoryRendezvousBackend(self.store, self.server)
        handler = DynamicRendezvousHandler(
            NodeDesc("host", 1, next(self.ids)), self.settings, "memory", self.store, backend, clock=self.clock
        )
        return Node(handler)

    # -- driving one node -------------------------------------------------------------------

    def _live(self) -> list[Node]:
        return [n for n in self.nodes if n.mode != "dead"]

    def _start_join(self, node: Node) -> None:
        """What next_rendezvous() does before its blocking loop."""
        node.handler._stop_heartbeats()
        node.handler._joined_at = None
        node.handler._leave_for_next_round(node.executor)
        node.executor.begin_join(self.clock.now + JOIN)
        node.mode, node.wait_until, node.joined = "joining", self.clock.now, None

    def _due(self, node: Node) -> float:
        """When ``node`` next has something to do on its own (no notification)."""
        if node.paused_until > self.clock.now:
            return node.paused_until
        if node.mode == "joining":
            return node.wait_until
        if node.mode == "member":
            return min(node.next_beat, node.next_poll)
        return self.clock.now if node.mode == "idle" else float("inf")

    def _changed(self, node: Node) -> bool:
        standing = node.executor.standing
        return standing is not None and self.server.wait_for_round_change(standing.change_id, 0)

    def _tick(self, node: Node) -> bool:
        """Let ``node`` do what is due now; return whether it did anything."""
        now = self.clock.now
        if node.mode == "dead" or node.paused_until > now:
            return False
        if node.mode == "idle":
            self._start_join(node)
            return True
        if node.mode == "joining":
            changed = self._changed(node)
            if node.wait_until > now and not changed:
                return False
            node.executor.wake(changed)
            try:
                outcome = node.executor.step()
            except RendezvousError as exc:
                event(f"join ended with {type(exc).__name__}")
                node.mode = "idle"
                return True
            if isinstance(outcome, Joined):
                self._joined(node, outcome)
            else:
                node.wait_until = outcome.until
            self.check_safety()
            return True
        acted = False
        if now >= node.next_beat:  # the keep-alive thread
            node.handler._keep_alive_tick()
            node.next_beat, acted = now + INTERVAL, True
        if now >= node.next_poll:  # the agent's monitor loop
            node.next_poll, acted = now + AGENT_POLL, True
            if node.handler.num_nodes_waiting() > 0:
                self._start_join(node)
        self.check_safety()
        return acted

    def _joined(self, node: Node, joined: Joined) -> None:
        rank, world_size, round_ = node.handler._record_join(joined)
        key = (joined.standing.incarnation, round_)
        got = self.ranks.setdefault(key, {})
        assert rank not in {r for k, (r, _) in got.items() if k != node.key}, f"rank {rank} given twice in {key}: {got}"
        assert all(w == world_size for _, w in got.values()), f"world sizes differ in {key}: {got} vs {world_size}"
        assert 0 <= rank < world_size
        got[node.key] = (rank, world_size)
        node.mode, node.joined = "member", key
        node.next_beat = self.clock.now + INTERVAL * 0.5
        node.next_poll = self.clock.now
        event("a node got a rank")

    # -- rules ------------------------------------------------------------------------------

    @rule(i=st.integers(0, SLOTS - 1))
    def act(self, i: int) -> None:
        self._tick(self.nodes[i])

    @rule()
    def everyone_acts(self) -> None:
        self._run_due()

    @rule(seconds=st.sampled_from([0.01, 0.05, 0.2, 0.5, 1.0, 2.5]))
    def time_passes(self, seconds: float) -> None:
        self.clock.now += seconds

    @rule(i=st.integers(0, SLOTS - 1))
    def kill(self, i: int) -> None:
        node = self.nodes[i]
        if node.mode != "dead":
            node.handler._stop_heartbeats()
            node.mode = "dead"
            event("a node was killed")

    @rule(i=st.integers(0, SLOTS - 1))
    def pause(self, i: int) -> None:
        """A node stops (a GC pause, a frozen VM) for longer than the dead-node timeout."""
        self.nodes[i].paused_until = self.clock.now + DEAD_AFTER + INTERVAL

    @rule()
    def mass_kill(self) -> None:
        live = self._live()
        for node in live[: max(1, len(live) // 3)]:
            node.mode = "dead"
        event("mass kill")

    @rule()
    def mass_leave(self) -> None:
        for node in self.nodes:
            if node.mode == "member":
                self._start_join(node)
        event("mass leave")

    @rule()
    def server_loses_data(self) -> None:
        self.server.lose_data()
        event("server lost its data")

    @rule(i=st.integers(0, SLOTS - 1))
    def arrive(self, i: int) -> None:
        """A dead node's machine is replaced by a new node."""
        if self.nodes[i].mode == "dead":
            self.nodes[i] = self._new_node()

    @rule()
    def settle(self) -> None:
        """Stop faults; schedule every node fairly; every live node must get a rank."""
        deadline = self.clock.now + max((n.paused_until - self.clock.now for n in self.nodes), default=0.0)
        deadline = max(deadline, self.clock.now) + LIVENESS_BOUND
        while True:
            self._run_due()
            if self._settled():
                event("settled")
                return
            upcoming = min(self._due(node) for node in self.nodes)
            assert upcoming != float("inf"), "no node has anything to do, yet the round has not formed"
            if upcoming > deadline:
                break
            self.clock.now = max(self.clock.now, upcoming)
        self._assert_settled()

    def _run_due(self) -> None:
        """Tick every node until none has anything due at this instant (a node that keeps
        acting without time passing is busy-looping: that fails the model)."""
        for _ in range(BUSY_LIMIT):
            if not any([self._tick(node) for node in self.nodes]):
                return
        states = [(n.key, n.mode, n.executor.standing) for n in self.nodes]
        raise AssertionError(f"nodes acted {BUSY_LIMIT} times at one instant (a busy loop): {states}")

    def teardown(self) -> None:
        if any(n.mode != "dead" for n in self.nodes):
            self.settle()

    # -- properties -------------------------------------------------------------------------

    def _settled(self) -> bool:
        live = self._live()
        rec = self.server.record
        if not MIN_NODES <= len(live) or rec is None:
            return len(live) < MIN_NODES
        current = (rec.incarnation, rec.round)
        members = [n for n in live if n.mode == "member" and n.joined == current]
        return rec.complete and len(members) == min(len(live), MAX_NODES) and len(rec.participants) == len(members)

    def _assert_settled(self) -> None:
        rec = self.server.record
        live = self._live()
        summary = [(n.key, n.mode, n.joined, n.executor.standing and n.executor.standing.role.value) for n in live]
        assert self._settled(), (
            f"after {LIVENESS_BOUND} s of fair scheduling the live nodes hold no ranks in one round: record="
            f"{None if rec is None else (rec.round, rec.complete, rec.participants, rec.wait_list, rec.redundancy)} nodes={summary}"
        )

    @invariant()
    def check_safety(self) -> None:
        rec = self.server.record
        if rec is None:
            return
        lists = [set(rec.participants), set(rec.wait_list), set(rec.redundancy)]
        assert sum(len(x) for x in lists) == len(set().union(*lists)), f"a node in two lists: {lists}"
        if rec.complete:
            assert MIN_NODES <= rec.world_size <= MAX_NODES
            ranks = list(rec.participants.values())
            assert len(set(ranks)) == len(ranks) and all(0 <= r < rec.world_size for r in ranks)
        else:
            assert len(rec.participants) < MAX_NODES
        assert rec.round >= self.rounds.get(rec.incarnation, 0), "the round number went back"
        self.rounds[rec.incarnation] = rec.round


MembershipModel.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestMembershipModel = MembershipModel.TestCase


def test_the_model_reaches_a_round_when_nothing_goes_wrong():
    """The fault-free run: six nodes, max four: four get ranks, two wait as spares."""
    model = MembershipModel()
    model.settle()
    roles = sorted(n.executor.standing.role for n in model.nodes)
    assert roles.count(Role.PARTICIPANT) == MAX_NODES
    assert [n.mode for n in model.nodes].count("member") == MAX_NODES
