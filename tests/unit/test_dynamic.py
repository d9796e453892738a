"""The dynamic rendezvous handler with many nodes (threads) over HashStore + StoreRendezvousBackend.

Every node is its own :class:`DynamicRendezvousHandler` (distinct node identity) built with
``from_backend`` over one shared :class:`HashStore`. Each test runs in two liveness modes:

* ``tracker`` — the backend's :class:`~rdzv_core.backend.LivenessTracker` and
  :class:`~rdzv_core.backend.ChangeNotifier` (``StoreRendezvousBackend`` itself);
* ``state`` — a wrapper exposing only ``name``/``get_state``/``set_state``: keep-alives live in
  the shared state and waiting nodes poll.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest

from rdzv_core.api import (
    RendezvousClosedError,
    RendezvousConnectionError,
    RendezvousGracefulExitError,
    RendezvousInfo,
    RendezvousParameters,
    RendezvousStateError,
    RendezvousTimeoutError,
)
from rdzv_core.backend import ChangeNotifier, LivenessTracker, RendezvousBackend
from rdzv_core.dynamic import (
    HANDLER_CONFIG_KEYS,
    DynamicRendezvousHandler,
    RendezvousEvent,
    RendezvousSettings,
    RendezvousTimeout,
    create_handler,
)
from rdzv_core.dynamic.ops import (
    _Action,
    _add_participant,
    _close_op,
    _Context,
    _exit_op,
    _join_op,
    _mark_complete,
    _missing_participants,
    _remove_nodes,
)
from rdzv_core.registry import get_rendezvous_handler
from rdzv_core.state import NodeDesc, RendezvousState, decode_state, encode_state
from rdzv_core.store import HashStore, PrefixStore
from rdzv_core.store_backend import StoreRendezvousBackend
from tests.backends import StateOnlyBackend

pytestmark = pytest.mark.unit

RUN = "job"
WAIT = 15.0  # upper bound of every wait in these tests (they finish far sooner)
#: Keep-alive settings. Tests that do not kill nodes use a dead window of seconds, so that a
#: busy machine (the suite shares 2 cores with others) never makes a live node look dead;
#: tests that kill a node use a short one.
INTERVAL, ATTEMPTS = 0.1, 30
FAST_DEATH = {"interval": 0.1, "attempts": 4}


# --------------------------------------------------------------------------------------------
# Helpers


class FlakyBackend(StateOnlyBackend):
    """Raises :class:`RendezvousConnectionError` from every call while ``down`` is set."""

    def __init__(self, inner: RendezvousBackend) -> None:
        super().__init__(inner)
        self.down = False

    def _check(self) -> None:
        if self.down:
            raise RendezvousConnectionError("backend at 10.0.0.1:6379 unreachable: connection refused")

    def get_state(self):
        self._check()
        return super().get_state()

    def set_state(self, state, token=None):
        self._check()
        return super().set_state(state, token)


class RacingBackend(StateOnlyBackend):
    """When ``race`` is set, another writer slips in before the next write: its CAS loses."""

    def __init__(self, inner: RendezvousBackend) -> None:
        super().__init__(inner)
        self.race = False
        self.writes = 0

    def set_state(self, state, token=None):
        self.writes += 1
        if self.race:
            self.race = False
            current = self._inner.get_state()
            assert current is not None and self._inner.set_state(current[0], current[1])[2]
        return super().set_state(state, token)


class Cluster:
    """Makes handlers of one run over one shared store; stops their keep-alives at teardown."""

    def __init__(self, kind: str, run_id: str = RUN) -> None:
        self.kind = kind
        self.run_id = run_id
        self.store = HashStore(timeout=WAIT)
        self.raw_backend = StoreRendezvousBackend(self.store, run_id)
        self.handlers: list[DynamicRendezvousHandler] = []

    def backend(self) -> RendezvousBackend:
        inner = StoreRendezvousBackend(self.store, self.run_id)
        return inner if self.kind == "tracker" else StateOnlyBackend(inner)

    def handler(
        self,
        min_nodes: int,
        max_nodes: int,
        *,
        backend: RendezvousBackend | None = None,
        join: float = WAIT,
        last_call: float = 0.3,
        close: float = 5.0,
        heartbeat: float = 2.0,
        interval: float = INTERVAL,
        attempts: int = ATTEMPTS,
        local_addr: str = "127.0.0.1",
    ) -> DynamicRendezvousHandler:
        handler = DynamicRendezvousHandler.from_backend(
            self.run_id,
            self.store,
            backend or self.backend(),
            min_nodes,
            max_nodes,
            local_addr,
            RendezvousTimeout(
                join=timedelta(seconds=join),
                last_call=timedelta(seconds=last_call),
                close=timedelta(seconds=close),
                heartbeat=timedelta(seconds=heartbeat),
            ),
            keep_alive_interval=interval,
            keep_alive_max_attempt=attempts,
        )
        self.handlers.append(handler)
        return handler

    def handlers_of(self, count: int, min_nodes: int, max_nodes: int, **kwargs: Any) -> list[DynamicRendezvousHandler]:
        return [self.handler(min_nodes, max_nodes, **kwargs) for _ in range(count)]

    def state(self) -> RendezvousState:
        """The stored state; before the first write, the initial state (as the handler sees it)."""
        current = self.raw_backend.get_state()
        return RendezvousState(run_id=self.run_id) if current is None else decode_state(current[0], self.run_id)

    def write_state(self, state: RendezvousState) -> None:
        current = self.raw_backend.get_state()
        result = self.raw_backend.set_state(encode_state(state), None if current is None else current[1])
        assert result is not None and result[2]

    def stop(self) -> None:
        for handler in self.handlers:
            handler._stop_heartbeats()


class Call:
    """Runs ``fn()`` in a thread; ``result()`` joins with a bound and returns or re-raises."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.value: Any = None
        self.error: BaseException | None = None
        self.started = time.monotonic()
        self.finished: float | None = None
        self.thread = threading.Thread(target=self._run, args=(fn,), daemon=True)
        self.thread.start()

    def _run(self, fn: Callable[[], Any]) -> None:
        try:
            self.value = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            self.error = exc
        finally:
            self.finished = time.monotonic()

    def done(self) -> bool:
        return not self.thread.is_alive()

    def join(self, timeout: float = WAIT) -> Call:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the call did not finish in time"
        return self

    def result(self, timeout: float = WAIT) -> Any:
        self.join(timeout)
        if self.error is not None:
            raise self.error
        return self.value

    @property
    def elapsed(self) -> float:
        assert self.finished is not None
        return self.finished - self.started


def rendezvous(handlers: list[DynamicRendezvousHandler]) -> list[Call]:
    return [Call(h.next_rendezvous) for h in handlers]


def results(calls: list[Call]) -> list[RendezvousInfo]:
    return [c.result() for c in calls]


def wait_until(predicate: Callable[[], bool], timeout: float = WAIT, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def assert_ranks(handlers: list[DynamicRendezvousHandler], infos: list[RendezvousInfo]) -> None:
    """Ranks are 0..W-1, assigned in the sorted order of the node keys."""
    world = len(handlers)
    keys = sorted(h.node.key for h in handlers)
    assert sorted(i.rank for i in infos) == list(range(world))
    for handler, info in zip(handlers, infos, strict=True):
        assert info.world_size == world
        assert info.rank == keys.index(handler.node.key)


@pytest.fixture(params=["tracker", "state"])
def cluster(request) -> Iterator[Cluster]:
    c = Cluster(request.param)
    yield c
    c.stop()


@pytest.fixture
def tracker_cluster() -> Iterator[Cluster]:
    c = Cluster("tracker")
    yield c
    c.stop()


# --------------------------------------------------------------------------------------------
# Rounds


def test_backend_kinds(cluster):
    backend = cluster.backend()
    assert isinstance(backend, LivenessTracker) is (cluster.kind == "tracker")
    assert isinstance(backend, ChangeNotifier) is (cluster.kind == "tracker")


def test_single_node_round(cluster):
    handler = cluster.handler(1, 1)
    info = handler.next_rendezvous()
    assert (info.rank, info.world_size) == (0, 1)
    state = cluster.state()
    assert state.complete and state.participants == {handler.node.key: 0} and state.world_size == 1


def test_round_completes_when_max_nodes_joined(cluster):
    handlers = cluster.handlers_of(4, 2, 4, last_call=60)  # the last call never ends in this test
    infos = results(rendezvous(handlers))
    assert_ranks(handlers, infos)
    state = cluster.state()
    assert state.complete and state.world_size == 4 and state.round == 0
    assert state.deadline is None and not state.wait_list and not state.redundancy_list


def test_round_completes_after_last_call_with_min_nodes(cluster):
    handlers = cluster.handlers_of(3, 3, 5, last_call=0.3)
    calls = rendezvous(handlers)
    infos = results(calls)
    assert_ranks(handlers, infos)
    assert all(c.elapsed >= 0.25 for c in calls)  # nobody completed before the last call ended
    assert cluster.state().world_size == 3


def test_no_completion_below_min_nodes(cluster):
    first = cluster.handler(2, 3, join=0.6)
    with pytest.raises(RendezvousTimeoutError):
        first.next_rendezvous()
    assert not cluster.state().complete


def test_ranks_are_deterministic_across_rounds(cluster):
    handlers = cluster.handlers_of(3, 3, 3)
    first = results(rendezvous(handlers))
    second = results(rendezvous(handlers))
    assert [i.rank for i in first] == [i.rank for i in second]
    assert_ranks(handlers, second)
    assert cluster.state().round == 1


def test_many_nodes_join_at_once(cluster):
    handlers = cluster.handlers_of(12, 12, 12)
    assert_ranks(handlers, results(rendezvous(handlers)))


def test_world_size_between_min_and_max_with_a_burst(cluster):
    handlers = cluster.handlers_of(6, 2, 4, last_call=0.3)
    calls = rendezvous(handlers)
    wait_until(lambda: (s := cluster.state()).complete and len(s.members()) == 6, what="everyone to be placed")
    state = cluster.state()
    assert 2 <= state.world_size <= 4
    assert len(state.participants) + len(state.wait_list) + len(state.redundancy_list) == 6
    members = [c for h, c in zip(handlers, calls, strict=True) if h.node.key in state.participants]
    infos = [c.result() for c in members]
    assert sorted(i.rank for i in infos) == list(range(state.world_size))
    assert all(i.world_size == state.world_size for i in infos)
    cluster.handlers[0].set_closed()
    for h, c in zip(handlers, calls, strict=True):
        c.join()
        if h.node.key in state.redundancy_list:
            assert isinstance(c.error, RendezvousGracefulExitError)
        elif h.node.key in state.wait_list:
            assert isinstance(c.error, RendezvousClosedError)


# --------------------------------------------------------------------------------------------
# Wait list, redundancy list, re-rendezvous


def test_late_node_waits_and_members_re_rendezvous_into_a_bigger_round(cluster):
    a, b = cluster.handlers_of(2, 2, 3, last_call=0.2)
    results(rendezvous([a, b]))
    assert a.num_nodes_waiting() == 0
    c = cluster.handler(2, 3, last_call=0.2)
    late = Call(c.next_rendezvous)
    wait_until(lambda: a.num_nodes_waiting() == 1, what="the late node to be reported waiting")
    assert b.num_nodes_waiting() == 1
    state = cluster.state()
    assert state.wait_list == [c.node.key] and c.node.key not in state.participants
    assert not late.done()

    infos = results(rendezvous([a, b]) + [late])
    assert_ranks([a, b, c], infos)
    state = cluster.state()
    assert state.round == 1 and state.world_size == 3 and not state.wait_list
    assert a.num_nodes_waiting() == 0


def test_node_beyond_max_goes_to_redundancy_list_and_exits_gracefully_on_close(cluster):
    a, b = cluster.handlers_of(2, 1, 2, last_call=0.2)
    results(rendezvous([a, b]))
    c = cluster.handler(1, 2)
    redundant = Call(c.next_rendezvous)
    wait_until(lambda: c.node.key in cluster.state().redundancy_list, what="the redundant node to register")
    assert a.num_nodes_waiting() == 0  # the round is full: nothing to re-form for
    state = cluster.state()
    assert c.node.key not in state.participants and c.node.key not in state.wait_list

    a.set_closed()
    redundant.join()
    assert isinstance(redundant.error, RendezvousGracefulExitError)


def test_wait_listed_node_gets_closed_error_on_close(cluster):
    a, b = cluster.handlers_of(2, 2, 3, last_call=0.2)
    results(rendezvous([a, b]))
    c = cluster.handler(2, 3)
    waiting = Call(c.next_rendezvous)
    wait_until(lambda: c.node.key in cluster.state().wait_list, what="the node to wait")
    a.set_closed()
    waiting.join()
    assert isinstance(waiting.error, RendezvousClosedError)


def test_redundant_node_is_admitted_when_room_appears(cluster):
    a, b = cluster.handlers_of(2, 1, 2, last_call=0.2)
    results(rendezvous([a, b]))
    c = cluster.handler(1, 2, last_call=0.2)
    third = Call(c.next_rendezvous)
    wait_until(lambda: c.node.key in cluster.state().redundancy_list, what="the redundant node")

    rejoin_a = Call(a.next_rendezvous)  # a leaves the round: there is room now
    wait_until(lambda: c.node.key in cluster.state().wait_list, what="the redundant node to move to the wait list")
    assert b.num_nodes_waiting() >= 1
    rejoin_b = Call(b.next_rendezvous)

    calls = {a.node.key: rejoin_a, b.node.key: rejoin_b, c.node.key: third}
    wait_until(lambda: sum(x.done() for x in calls.values()) == 2, what="the new round")
    state = cluster.state()
    assert state.round == 1 and state.complete and state.world_size == 2
    left_out = [key for key, call in calls.items() if not call.done()]
    assert len(left_out) == 1
    # the node left out of the full round is redundant, not waiting: no pointless re-rendezvous
    wait_until(lambda: left_out[0] in cluster.state().redundancy_list, what="the left-out node to become redundant")
    assert not cluster.state().wait_list
    members = [h for h in (a, b, c) if h.node.key != left_out[0]]  # the left-out one is blocked
    assert all(h.num_nodes_waiting() == 0 for h in members)
    assert sorted(call.result().rank for call in calls.values() if call.done()) == [0, 1]
    assert members[0].shutdown() is True
    calls[left_out[0]].join()
    assert isinstance(calls[left_out[0]].error, RendezvousGracefulExitError)


def test_rejoining_removes_the_node_and_the_last_one_out_advances_the_round(cluster):
    a, b, c = cluster.handlers_of(3, 3, 3)
    results(rendezvous([a, b, c]))
    assert cluster.state().round == 0

    rejoin_a = Call(a.next_rendezvous)
    wait_until(lambda: a.node.key not in cluster.state().participants, what="a to leave the round")
    state = cluster.state()
    assert state.complete and state.round == 0 and state.world_size == 3
    assert set(state.participants) == {b.node.key, c.node.key}
    assert state.participants[b.node.key] != state.participants[c.node.key]  # ranks kept
    assert b.num_nodes_waiting() >= 1  # a missing participant: re-form

    rejoin_b = Call(b.next_rendezvous)
    wait_until(lambda: b.node.key not in cluster.state().participants, what="b to leave the round")
    assert cluster.state().round == 0
    rejoin_c = Call(c.next_rendezvous)  # the last participant leaves: round 1 starts
    infos = results([rejoin_a, rejoin_b, rejoin_c])
    assert_ranks([a, b, c], infos)
    assert cluster.state().round == 1
    for info in infos:
        assert info.store.prefix == f"rdzv.{RUN}.1"


def test_exit_of_an_incomplete_round_keeps_the_round_number(cluster):
    a = cluster.handler(2, 2, join=0.4)
    with pytest.raises(RendezvousTimeoutError):
        a.next_rendezvous()
    state = cluster.state()
    assert state.round == 0 and not state.participants and state.deadline is None


# --------------------------------------------------------------------------------------------
# Keep-alives and dead nodes


def test_node_whose_heartbeats_stop_is_removed(cluster):
    handlers = cluster.handlers_of(3, 2, 3, **FAST_DEATH)
    results(rendezvous(handlers))
    a, b, dead = handlers
    dead._stop_heartbeats()
    started = time.monotonic()
    wait_until(lambda: a.num_nodes_waiting() > 0, what="survivors to notice the dead node")
    assert time.monotonic() - started >= 0.1  # not before it missed its keep-alives
    state = cluster.state()
    assert dead.node.key not in state.participants and dead.node.key not in state.last_heartbeats
    assert set(state.participants) == {a.node.key, b.node.key}
    assert state.complete and state.world_size == 3
    wait_until(lambda: b.num_nodes_waiting() > 0, what="the second survivor")

    infos = results(rendezvous([a, b]))
    assert_ranks([a, b], infos)
    assert cluster.state().round == 1


def test_keep_alive_that_loses_its_compare_and_set_is_retried():
    """State liveness: a keep-alive counts only once it is in the shared state (as in torch)."""
    c = Cluster("state")
    try:
        racing = RacingBackend(c.backend())
        a = c.handler(1, 1, backend=racing, interval=30)  # the keep-alive thread stays idle
        a.next_rendezvous()
        before = c.state().last_heartbeats[a.node.key]
        while time.time() <= before:  # a later wall-clock reading than the first keep-alive
            time.sleep(0.001)
        a._executor._last_beat = float("-inf")  # a keep-alive is due now
        racing.race = True
        writes = racing.writes
        a._keep_alive_tick()
        assert racing.writes == writes + 2  # lost once, then written
        assert c.state().last_heartbeats[a.node.key] > before
    finally:
        c.stop()


def test_live_nodes_are_not_removed(cluster):
    handlers = cluster.handlers_of(3, 3, 3, interval=0.05, attempts=10)
    results(rendezvous(handlers))
    deadline = time.monotonic() + 1.0  # twice the dead window, 20 keep-alive intervals
    while time.monotonic() < deadline:
        assert all(h.num_nodes_waiting() == 0 for h in handlers)
        time.sleep(0.05)
    assert len(cluster.state().participants) == 3


def test_dead_node_written_into_the_state_is_removed(cluster):
    """A node that joined (its key is in the state) and then never beat again."""
    ghost = NodeDesc("zz-ghost", 4242, 0).key  # sorts after 127.0.0.1: never rank 0
    state = RendezvousState(run_id=RUN, participants={ghost: 0})
    if cluster.kind == "tracker":
        cluster.raw_backend.keep_alive(ghost, 1.0)
    else:
        state.last_heartbeats[ghost] = time.time()
    cluster.write_state(state)

    a = cluster.handler(2, 2, interval=0.1, attempts=8)  # the ghost must outlive a's join
    info = a.next_rendezvous()  # completes at once: the ghost counts until it is found dead
    assert (info.rank, info.world_size) == (0, 2)
    wait_until(lambda: a.num_nodes_waiting() > 0, what="the ghost to be removed")
    state = cluster.state()
    assert set(state.participants) == {a.node.key} and ghost not in state.last_heartbeats
    if cluster.kind == "tracker":
        assert cluster.raw_backend.heartbeat_ages([ghost]) == [None]


def test_stale_node_in_the_lists_is_removed_on_join(cluster):
    ghosts = [NodeDesc("ghost", 1, i).key for i in range(3)]
    state = RendezvousState(run_id=RUN, participants={ghosts[0]: 0}, wait_list=[ghosts[1]], redundancy_list=[ghosts[2]])
    if cluster.kind == "state":
        state.last_heartbeats = {g: time.time() - 3600 for g in ghosts}
    cluster.write_state(state)
    handlers = cluster.handlers_of(2, 2, 2)
    infos = results(rendezvous(handlers))
    assert_ranks(handlers, infos)
    state = cluster.state()
    assert set(state.members()) == {h.node.key for h in handlers}


def test_timed_out_waiting_node_leaves_the_wait_list(cluster):
    a, b = cluster.handlers_of(2, 2, 3)
    results(rendezvous([a, b]))
    c = cluster.handler(2, 3, join=0.5)
    with pytest.raises(RendezvousTimeoutError):
        c.next_rendezvous()  # rolls itself back out of the wait list
    assert c.node.key not in cluster.state().wait_list
    assert a.num_nodes_waiting() == 0


def test_a_removed_node_can_come_back(cluster):
    handlers = cluster.handlers_of(2, 2, 2, **FAST_DEATH)
    results(rendezvous(handlers))
    a, gone = handlers
    gone._stop_heartbeats()
    wait_until(lambda: a.num_nodes_waiting() > 0, what="the node to be removed")
    infos = results(rendezvous(handlers))
    assert_ranks(handlers, infos)


# --------------------------------------------------------------------------------------------
# Close, shutdown, timeouts, backend errors


def test_set_closed_is_seen_by_everyone_and_stays_closed(cluster):
    a, b = cluster.handlers_of(2, 1, 2, last_call=0.2)
    results(rendezvous([a, b]))
    assert not a.is_closed() and not b.is_closed()
    a.set_closed()
    assert a.is_closed() and b.is_closed()
    a.set_closed()  # closing again is fine
    assert cluster.state().closed
    for handler in (a, b, cluster.handler(1, 2)):
        with pytest.raises(RendezvousClosedError):
            handler.next_rendezvous()
    assert a.is_closed() and cluster.state().closed


def test_close_wakes_nodes_waiting_for_a_round(cluster):
    a = cluster.handler(3, 3)
    waiting = Call(a.next_rendezvous)
    wait_until(lambda: a.node.key in cluster.state().participants, what="the node to join")
    b = cluster.handler(3, 3)
    b.set_closed()
    waiting.join()
    assert isinstance(waiting.error, RendezvousClosedError)


@pytest.mark.parametrize("method", ["set_closed", "shutdown"])
def test_closing_from_another_thread_ends_the_pending_join_of_the_same_handler(cluster, method):
    """The API contract: "pending and future joins fail with RendezvousClosedError" - also
    the join this very handler runs in another thread (an agent's signal/shutdown path)."""
    a = cluster.handler(2, 2)  # waits for a second node that never comes (join timeout: 15 s)
    waiting = Call(a.next_rendezvous)
    wait_until(lambda: a.node.key in cluster.state().participants, what="the node to join")
    closing = Call(getattr(a, method))
    closing.join(5)  # promptly, not after the join timeout
    assert closing.error is None and closing.value in (None, True)
    waiting.join(5)
    assert isinstance(waiting.error, RendezvousClosedError)
    assert cluster.state().closed


def test_shutdown_closes_and_returns_true(cluster):
    a, b = cluster.handlers_of(2, 2, 2)
    results(rendezvous([a, b]))
    assert a.shutdown() is True
    assert not a._keep_alives.running and not a._keep_alives.armed
    assert b.is_closed()
    assert b.shutdown() is True  # already closed: still fine


def test_shutdown_returns_false_when_the_backend_fails(cluster, caplog):
    flaky = FlakyBackend(cluster.backend())
    a = cluster.handler(1, 1, backend=flaky)
    a.next_rendezvous()
    flaky.down = True
    with caplog.at_level(logging.WARNING, logger="rdzv_core.dynamic"):
        assert a.shutdown() is False
    assert "unreachable" in caplog.text
    flaky.down = False
    assert not a.is_closed()


def test_connection_error_propagates_from_next_rendezvous(cluster):
    flaky = FlakyBackend(cluster.backend())
    flaky.down = True
    a = cluster.handler(1, 1, backend=flaky)
    with pytest.raises(RendezvousConnectionError, match="10.0.0.1:6379"):
        a.next_rendezvous()
    with pytest.raises(RendezvousConnectionError):
        a.is_closed()
    with pytest.raises(RendezvousConnectionError):
        a.num_nodes_waiting()
    flaky.down = False
    assert a.next_rendezvous().world_size == 1


def test_connection_error_while_waiting_propagates(cluster):
    flaky = FlakyBackend(cluster.backend())
    a = cluster.handler(2, 2, backend=flaky)
    waiting = Call(a.next_rendezvous)
    wait_until(lambda: a.node.key in cluster.state().participants, what="the node to join")
    flaky.down = True
    waiting.join()
    assert isinstance(waiting.error, RendezvousConnectionError)


def test_join_timeout_rolls_the_node_back(cluster):
    a = cluster.handler(2, 3, join=0.5)
    started = time.monotonic()
    with pytest.raises(RendezvousTimeoutError):
        a.next_rendezvous()
    assert 0.4 <= time.monotonic() - started < 5
    state = cluster.state()
    assert a.node.key not in state.participants and not state.participants
    assert a.node.key not in state.wait_list and a.node.key not in state.last_heartbeats
    assert not a._keep_alives.running and not a._keep_alives.armed


def test_timed_out_node_does_not_block_a_later_round(cluster):
    a = cluster.handler(2, 2, join=0.4)
    with pytest.raises(RendezvousTimeoutError):
        a.next_rendezvous()
    b, c = cluster.handlers_of(2, 2, 2)
    assert_ranks([b, c], results(rendezvous([b, c])))


def test_corrupt_state_surfaces_as_state_error(cluster):
    cluster.store.set(f"rdzv.{RUN}.state", b"\x80\x04garbage")
    with pytest.raises(RendezvousStateError):
        cluster.handler(1, 1).next_rendezvous()


def test_corrupt_payload_surfaces_as_state_error(cluster):
    cluster.store.set(f"rdzv.{RUN}.state", b"1:\xc1\xc1 not msgpack")
    a = cluster.handler(1, 1)
    with pytest.raises(RendezvousStateError):
        a.next_rendezvous()
    with pytest.raises(RendezvousStateError):
        a.is_closed()


def test_state_of_another_run_surfaces_as_state_error(cluster):
    cluster.store.set(f"rdzv.{RUN}.state", b"1:" + encode_state(RendezvousState(run_id="intruder")))
    with pytest.raises(RendezvousStateError, match="intruder"):
        cluster.handler(1, 1).next_rendezvous()


# --------------------------------------------------------------------------------------------
# Identity, store, events, logs


def test_handlers_in_one_process_are_distinct_nodes(cluster):
    handlers = cluster.handlers_of(5, 1, 5)
    keys = [h.node.key for h in handlers]
    assert len(set(keys)) == 5
    for h in handlers:
        assert NodeDesc.from_key(h.node.key) == h.node
        assert h.node.addr == "127.0.0.1"
        assert h.node.key == f"{h.node.addr}_{h.node.pid}_{h.node.local_id}"


def test_handler_accessors(cluster):
    h = cluster.handler(1, 2)
    assert h.get_run_id() == RUN
    assert h.get_backend() == "store"
    assert h.use_agent_store is False
    assert h.settings.min_nodes == 1 and h.settings.max_nodes == 2
    assert h.num_nodes_waiting() == 0  # no state yet
    assert not h.is_closed()


def test_store_is_scoped_to_run_and_round_and_bootstrap_info_agrees(cluster):
    handlers = cluster.handlers_of(3, 3, 3)
    infos = results(rendezvous(handlers))
    for info in infos:
        assert isinstance(info.store, PrefixStore)
        assert info.store.prefix == f"rdzv.{RUN}.0"
        assert info.store.underlying_store is cluster.store
    assert len({(i.bootstrap_store_info.master_addr, i.bootstrap_store_info.master_port) for i in infos}) == 1
    assert infos[0].bootstrap_store_info.master_addr == "127.0.0.1"
    infos[0].store.set("shared", b"hello")
    assert all(i.store.get("shared") == b"hello" for i in infos)

    second = results(rendezvous(handlers))
    assert {i.store.prefix for i in second} == {f"rdzv.{RUN}.1"}
    assert not second[0].store.check(["shared"])  # a new round gets a fresh namespace


def test_event_listener_and_one_log_line_per_transition(cluster, caplog):
    handlers = cluster.handlers_of(2, 2, 2)
    events: dict[str, list[RendezvousEvent]] = {h.node.key: [] for h in handlers}
    for h in handlers:
        h.add_event_listener(events[h.node.key].append)
    with caplog.at_level(logging.INFO, logger="rdzv_core.dynamic"):
        infos = results(rendezvous(handlers))
    for h, info in zip(handlers, infos, strict=True):
        names = [e.name for e in events[h.node.key]]
        assert names[0] == "joining" and names[-1] == "completed"
        assert names.count("joining") == 1 and names.count("completed") == 1
        completed = events[h.node.key][-1]
        assert (completed.rank, completed.world_size) == (info.rank, 2)
        assert completed.run_id == RUN and completed.node == h.node.key and completed.round == 0
        joining_lines = [
            r for r in caplog.records if "attempts to join" in r.getMessage() and h.node.key in r.getMessage()
        ]
        completed_lines = [
            r for r in caplog.records if "has joined round" in r.getMessage() and h.node.key in r.getMessage()
        ]
        assert len(joining_lines) == 1 and len(completed_lines) == 1
        assert f"as rank {info.rank} in a world of size 2" in completed_lines[0].getMessage()


def test_waiting_timeout_and_close_events(cluster, caplog):
    a, b = cluster.handlers_of(2, 2, 3, last_call=0.2)
    results(rendezvous([a, b]))
    c = cluster.handler(2, 3, join=0.4)
    events: list[RendezvousEvent] = []
    c.add_event_listener(events.append)
    with caplog.at_level(logging.INFO, logger="rdzv_core.dynamic"):
        with pytest.raises(RendezvousTimeoutError):
            c.next_rendezvous()
        c.set_closed()
    assert [e.name for e in events] == ["joining", "waiting", "timed_out", "closed"]
    assert sum("waits in the wait list" in r.getMessage() for r in caplog.records) == 1
    assert sum("timed out" in r.getMessage() for r in caplog.records) == 1


def test_removed_dead_nodes_event(cluster):
    handlers = cluster.handlers_of(2, 2, 2, **FAST_DEATH)
    results(rendezvous(handlers))
    a, dead = handlers
    events: list[RendezvousEvent] = []
    a.add_event_listener(events.append)
    dead._stop_heartbeats()
    wait_until(lambda: any(e.name == "removed_dead_nodes" for e in events), what="the removal event")
    removal = next(e for e in events if e.name == "removed_dead_nodes")
    assert dead.node.key in removal.message


def test_failing_listener_does_not_break_the_handler(cluster, caplog):
    a = cluster.handler(1, 1)

    def broken(event):
        raise RuntimeError("listener bug")

    a.add_event_listener(broken)
    with caplog.at_level(logging.ERROR, logger="rdzv_core.dynamic"):
        assert a.next_rendezvous().world_size == 1
    assert "listener" in caplog.text


# --------------------------------------------------------------------------------------------
# Settings and creation from parameters


def test_timeout_validation():
    assert RendezvousTimeout().join == timedelta(seconds=600)
    assert RendezvousTimeout(last_call=timedelta(seconds=1)).last_call == timedelta(seconds=1)
    for name in ("join", "last_call", "close", "heartbeat"):
        with pytest.raises(ValueError, match=name):
            RendezvousTimeout(**{name: timedelta(0)})
        with pytest.raises(ValueError, match=name):
            RendezvousTimeout(**{name: timedelta(seconds=-1)})


def test_settings_validation():
    ok = dict(
        run_id="r",
        min_nodes=1,
        max_nodes=2,
        timeout=RendezvousTimeout(),
        keep_alive_interval=timedelta(seconds=1),
        keep_alive_max_attempt=3,
    )
    assert RendezvousSettings(**ok).dead_after_s == 3.0
    for change in (
        {"run_id": ""},
        {"min_nodes": 0},
        {"max_nodes": 0},
        {"keep_alive_interval": timedelta(0)},
        {"keep_alive_max_attempt": 0},
    ):
        with pytest.raises(ValueError):
            RendezvousSettings(**{**ok, **change})


@pytest.mark.parametrize("interval", [0, -1, "5", True])
def test_from_backend_rejects_bad_intervals(interval):
    with pytest.raises(ValueError, match="keep_alive_interval"):
        DynamicRendezvousHandler.from_backend(
            RUN, HashStore(), StoreRendezvousBackend(HashStore(), RUN), 1, 1, keep_alive_interval=interval
        )


def test_create_handler_reads_the_config():
    store = HashStore()
    params = RendezvousParameters(
        "store",
        "",
        RUN,
        2,
        3,
        join_timeout="7",
        last_call_timeout=0.5,
        close_timeout="2",
        heartbeat_timeout="1.5",
        keep_alive_interval="0.25",
        keep_alive_max_attempt="4",
    )
    h = create_handler(store, StoreRendezvousBackend(store, RUN), params)
    s = h.settings
    assert (s.min_nodes, s.max_nodes, s.run_id) == (2, 3, RUN)
    assert s.timeout.join == timedelta(seconds=7) and s.timeout.last_call == timedelta(seconds=0.5)
    assert s.timeout.close == timedelta(seconds=2) and s.timeout.heartbeat == timedelta(seconds=1.5)
    assert s.keep_alive_interval == timedelta(seconds=0.25) and s.keep_alive_max_attempt == 4
    assert set(HANDLER_CONFIG_KEYS) >= {"join_timeout", "last_call_timeout", "keep_alive_interval"}


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("join_timeout", "abc"),
        ("join_timeout", "0"),
        ("last_call_timeout", "-1"),
        ("close_timeout", "nan"),
        ("heartbeat_timeout", ""),
        ("keep_alive_interval", "0"),
        ("keep_alive_max_attempt", "0"),
        ("keep_alive_max_attempt", "1.5"),
    ],
)
def test_create_handler_bad_config_names_the_key(key, value):
    store = HashStore()
    params = RendezvousParameters("store", "", RUN, 1, 1, **{key: value})
    with pytest.raises(ValueError, match=key):
        create_handler(store, StoreRendezvousBackend(store, RUN), params)


def test_memory_plugin_end_to_end(caplog):
    config = {"last_call_timeout": "0.2", "keep_alive_interval": "0.1", "join_timeout": "10", "unknown_knob": "1"}
    with caplog.at_level(logging.WARNING, logger="rdzv_core.utils"):
        handlers = [
            get_rendezvous_handler(
                RendezvousParameters("memory", "", "memory-e2e", 2, 2, local_addr="127.0.0.1", **config)
            )
            for _ in range(2)
        ]
    assert "unknown_knob" in caplog.text
    try:
        assert all(h.get_backend() == "memory" for h in handlers)
        assert_ranks(handlers, results(rendezvous(handlers)))
        assert handlers[0].shutdown() is True
        assert handlers[1].is_closed()
    finally:
        for h in handlers:
            h._stop_heartbeats()


# --------------------------------------------------------------------------------------------
# The pure state transitions (no threads): the decision table of the join operation


def _settings(min_nodes: int = 2, max_nodes: int = 3) -> RendezvousSettings:
    return RendezvousSettings(
        RUN, min_nodes, max_nodes, RendezvousTimeout(last_call=timedelta(seconds=5)), timedelta(seconds=1), 3
    )


def _decide(
    state: RendezvousState,
    node: str = "me",
    *,
    deadline_in: float = 60,
    keep_alive_due: bool = False,
    settings: RendezvousSettings | None = None,
):
    ctx = _Context(node, state, settings or _settings(), keep_alive_due, time.monotonic(), time.time())
    return _join_op(ctx, time.monotonic() + deadline_in)


def test_join_op_decision_table():
    A = _Action
    st = RendezvousState
    assert _decide(st(run_id=RUN, closed=True)) is A.ERROR_CLOSED
    assert _decide(st(run_id=RUN, closed=True, redundancy_list=["me"])) is A.ERROR_GRACEFUL_EXIT
    full = {"a": 0, "b": 1, "c": 2}
    assert _decide(st(run_id=RUN, complete=True, participants=full, world_size=3, redundancy_list=["me"])) is A.SYNC
    assert (
        _decide(
            st(run_id=RUN, complete=True, participants=full, world_size=3, redundancy_list=["me"]), keep_alive_due=True
        )
        is A.KEEP_ALIVE
    )
    # a redundant node never times out while the round is full
    assert (
        _decide(
            st(run_id=RUN, complete=True, participants=full, world_size=3, redundancy_list=["me"]), deadline_in=-100
        )
        is A.SYNC
    )
    assert (
        _decide(st(run_id=RUN, complete=True, participants={"a": 0, "b": 1}, world_size=3, redundancy_list=["me"]))
        is A.REMOVE_FROM_REDUNDANCY_LIST
    )
    assert _decide(st(run_id=RUN, complete=True, participants={"a": 0, "me": 1}, world_size=2)) is A.FINISH
    assert _decide(st(run_id=RUN, complete=True, participants={"a": 0, "b": 1}, world_size=2)) is A.ADD_TO_WAIT_LIST
    assert (
        _decide(st(run_id=RUN, complete=True, participants={"a": 0, "b": 1}, world_size=2, wait_list=["me"])) is A.SYNC
    )
    assert _decide(st(run_id=RUN, complete=True, participants=full, world_size=3)) is A.ADD_TO_REDUNDANCY_LIST
    # a wait-listed node left out of a full round becomes redundant (it must not look waiting)
    assert (
        _decide(st(run_id=RUN, complete=True, participants=full, world_size=3, wait_list=["me"]))
        is A.ADD_TO_REDUNDANCY_LIST
    )
    assert _decide(st(run_id=RUN)) is A.ADD_TO_PARTICIPANTS
    assert _decide(st(run_id=RUN, participants={"a": 0})) is A.ADD_TO_PARTICIPANTS
    assert _decide(st(run_id=RUN, participants={"a": 0}, wait_list=["me"])) is A.ADD_TO_PARTICIPANTS
    assert _decide(st(run_id=RUN, participants={"me": 0})) is A.SYNC
    assert _decide(st(run_id=RUN, participants={"a": 0, "me": 0}, deadline=time.time() + 60)) is A.SYNC
    assert (
        _decide(st(run_id=RUN, participants={"a": 0, "me": 0}, deadline=time.time() - 1)) is A.MARK_RENDEZVOUS_COMPLETE
    )
    # past the join deadline: roll back, then time out
    assert _decide(st(run_id=RUN, participants={"me": 0}), deadline_in=-1) is A.REMOVE_FROM_PARTICIPANTS
    assert (
        _decide(st(run_id=RUN, complete=True, participants={"a": 0}, world_size=2, wait_list=["me"]), deadline_in=-1)
        is A.REMOVE_FROM_WAIT_LIST
    )
    assert _decide(st(run_id=RUN), deadline_in=-1) is A.ERROR_TIMEOUT
    assert _decide(st(run_id=RUN, participants={"me": 0}), deadline_in=-100) is A.ERROR_TIMEOUT


def test_exit_and_close_ops():
    s = _settings()
    future, past = time.monotonic() + 60, time.monotonic() - 1
    member = RendezvousState(run_id=RUN, participants={"me": 0})
    assert (
        _exit_op(_Context("me", member, s, False, time.monotonic(), time.time()), future)
        is _Action.REMOVE_FROM_PARTICIPANTS
    )
    assert _exit_op(_Context("me", member, s, False, time.monotonic(), time.time()), past) is _Action.ERROR_TIMEOUT
    assert (
        _exit_op(_Context("me", RendezvousState(run_id=RUN), s, False, time.monotonic(), time.time()), past)
        is _Action.FINISH
    )
    assert (
        _close_op(_Context("me", RendezvousState(run_id=RUN), s, False, time.monotonic(), time.time()), future)
        is _Action.MARK_RENDEZVOUS_CLOSED
    )
    assert (
        _close_op(_Context("me", RendezvousState(run_id=RUN), s, False, time.monotonic(), time.time()), past)
        is _Action.ERROR_TIMEOUT
    )
    assert (
        _close_op(
            _Context("me", RendezvousState(run_id=RUN, closed=True), s, False, time.monotonic(), time.time()), past
        )
        is _Action.FINISH
    )


def test_add_participant_last_call_and_completion():
    s = _settings(2, 3)
    state = RendezvousState(run_id=RUN, wait_list=["b"])
    _add_participant(state, "c", s, time.time())
    assert state.deadline is None and not state.complete
    _add_participant(state, "b", s, time.time())
    assert state.wait_list == [] and state.deadline is not None and state.deadline > time.time()
    _add_participant(state, "a", s, time.time())
    assert state.complete and state.deadline is None and state.world_size == 3
    assert state.participants == {"a": 0, "b": 1, "c": 2}


def test_mark_complete_assigns_sorted_ranks():
    state = RendezvousState(run_id=RUN, participants={"n_1_10": 0, "n_1_9": 0, "m_5_0": 0}, deadline=1.0)
    _mark_complete(state)
    assert state.participants == {"m_5_0": 0, "n_1_10": 1, "n_1_9": 2}
    assert state.world_size == 3 and state.complete and state.deadline is None


def test_remove_nodes_epilogue():
    s = _settings(2, 3)
    complete = RendezvousState(
        run_id=RUN,
        round=4,
        complete=True,
        participants={"a": 0, "b": 1},
        world_size=2,
        wait_list=["w"],
        last_heartbeats={"a": 1.0, "w": 1.0},
    )
    assert _remove_nodes(complete, ["a", "w"], s) is True
    assert complete.participants == {"b": 1} and complete.world_size == 2 and complete.round == 4
    assert complete.wait_list == [] and complete.last_heartbeats == {}
    assert _missing_participants(complete) == 1
    assert _remove_nodes(complete, ["b"], s) is True
    assert (complete.complete, complete.round, complete.world_size) == (False, 5, 0)

    forming = RendezvousState(
        run_id=RUN, participants={"a": 0, "b": 0}, deadline=time.time() + 5, redundancy_list=["r"]
    )
    assert _remove_nodes(forming, ["r"], s) is False and forming.deadline is not None
    assert _remove_nodes(forming, ["a"], s) is True
    assert forming.deadline is None and forming.round == 0
    assert _remove_nodes(forming, ["nobody"], s) is False
