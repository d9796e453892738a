"""The state-based join-queue path (used by backends with a JoinQueue but no AtomicMembership),
driven through real handlers over an in-process queue (:class:`tests.backends.QueuedBackend`)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from rdzv_core.dynamic import DynamicRendezvousHandler, RendezvousTimeout
from rdzv_core.store import HashStore
from tests.backends import QueuedBackend

pytestmark = pytest.mark.unit

#: Every wait of these tests is bounded by this (seconds).
BOUND = 30


class Run:
    """Handlers of one run sharing a store and a queue."""

    def __init__(self, run_id: str) -> None:
        self.run_id, self.store, self.queue, self.lock = run_id, HashStore(timeout=5), {}, threading.Lock()
        self.sets = 0

    def backend(self) -> QueuedBackend:
        backend = QueuedBackend(self.store, self.run_id, self.queue, self.lock)
        inner = backend.set_state

        def counted(state, token=None):
            with self.lock:
                self.sets += 1
            return inner(state, token)

        backend.set_state = counted  # type: ignore[method-assign]
        return backend

    def handler(
        self, min_nodes: int, max_nodes: int, interval: float = 0.5, join: float = BOUND
    ) -> DynamicRendezvousHandler:
        timeout = RendezvousTimeout(join=_td(join), last_call=_td(0.3), close=_td(5), heartbeat=_td(2))
        return DynamicRendezvousHandler.from_backend(
            self.run_id,
            self.store,
            self.backend(),
            min_nodes,
            max_nodes,
            "127.0.0.1",
            timeout,
            keep_alive_interval=interval,
        )


def _td(seconds: float):
    from datetime import timedelta

    return timedelta(seconds=seconds)


def test_a_burst_is_admitted_through_the_queue_with_few_state_writes():
    run = Run("burst")
    handlers = [run.handler(8, 8) for _ in range(8)]
    with ThreadPoolExecutor(8) as pool:
        infos = [f.result(timeout=BOUND) for f in [pool.submit(h.next_rendezvous) for h in handlers]]
    assert sorted(i.rank for i in infos) == list(range(8))
    assert {i.world_size for i in infos} == {8}
    assert run.queue == {}, "admitted nodes are acknowledged"
    assert run.sets <= 8, f"{run.sets} compare-and-sets for 8 joins (one admission should take most)"
    for h in handlers:
        h.shutdown()


def test_a_node_behind_a_dead_head_takes_over():
    """A head that died before admitting anyone does not stall the queue: a node behind it
    admits the queue itself (the ghost too: it is swept as dead), and the agents re-form."""
    run = Run("dead-head")
    run.queue["ghost_1_0"] = 1  # enqueued, then died before admitting anyone
    a, b = run.handler(2, 2), run.handler(2, 2)
    with ThreadPoolExecutor(2) as pool:
        first = [pool.submit(h.next_rendezvous) for h in (a, b)]
        done = next(f for f in _as_completed(first))  # one of them got into the ghost's round
        member, other = (a, b) if done is first[0] else (b, a)
        deadline = time.monotonic() + BOUND
        while member.num_nodes_waiting() == 0:  # the ghost is swept or the other waits
            assert time.monotonic() < deadline
            time.sleep(0.02)
        again = member.next_rendezvous()  # the agent re-forms
        info_other = first[1 if member is a else 0].result(timeout=BOUND)
    assert sorted([again.rank, info_other.rank]) == [0, 1] and again.world_size == 2
    assert other.state.participants.keys() == {a._this_node.key, b._this_node.key}
    for h in (a, b):
        h.shutdown()


def _as_completed(futures):
    from concurrent.futures import as_completed

    return as_completed(futures, timeout=BOUND)


def test_a_queued_node_whose_entry_the_server_lost_is_admitted_within_an_interval():
    interval = 0.5
    run = Run("lost-queue")
    run.queue["ghost_1_0"] = 1  # a dead head keeps A queued (not admitted)
    a = run.handler(2, 2, interval=interval)
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(a.next_rendezvous)
        deadline = time.monotonic() + BOUND
        while a._this_node.key not in run.queue:  # A is queued behind the ghost
            assert time.monotonic() < deadline and not future.done()
            time.sleep(0.01)
        run.backend().lose_data()  # state and queue gone
        lost_at = time.monotonic()
        while a._this_node.key not in run.queue and not a.state.has_member(a._this_node.key):
            assert time.monotonic() < lost_at + BOUND, "A never re-enqueued"
            time.sleep(0.01)
        back_after = time.monotonic() - lost_at
        b = run.handler(2, 2, interval=interval)
        info_b = b.next_rendezvous()
        info_a = future.result(timeout=BOUND)
    assert sorted([info_a.rank, info_b.rank]) == [0, 1]
    # Within one keep-alive interval (plus scheduling slack on a loaded machine).
    assert back_after < interval + 2.0, f"A re-enqueued {back_after:.2f} s after the loss"
    for h in (a, b):
        h.shutdown()


def test_a_redundant_node_gets_a_fresh_join_deadline_when_room_appears():
    """torch: a spare that leaves the redundancy list starts its join deadline again."""
    from rdzv_core.dynamic.ops import _exit_op

    run = Run("spare")
    # min = max = 2: the next round needs b and the spare, so it cannot complete with the spare
    # alone before b re-joins (with min 1 it could, after the 0.3 s last call, on a slow machine).
    a, b = run.handler(2, 2), run.handler(2, 2)
    with ThreadPoolExecutor(2) as pool:
        [f.result(timeout=BOUND) for f in [pool.submit(h.next_rendezvous) for h in (a, b)]]
    spare = run.handler(2, 2, join=1.5)
    with ThreadPoolExecutor(2) as pool:
        future = pool.submit(spare.next_rendezvous)
        deadline = time.monotonic() + BOUND
        while spare._this_node.key not in a.state.redundancy_list:
            assert time.monotonic() < deadline and not future.done()
            time.sleep(0.02)
            a.num_nodes_waiting()  # reads the state
        time.sleep(2.0)  # the spare waits longer than its join timeout (1.5 s): allowed while full
        assert not future.done()
        a._stop_heartbeats()
        with a._lock:  # room appears: a leaves the round
            a._executor.run(_exit_op, time.monotonic() + BOUND)
        info_b = pool.submit(b.next_rendezvous).result(timeout=BOUND)  # b re-forms with the spare
        info = future.result(timeout=BOUND)
    assert sorted([info.rank, info_b.rank]) == [0, 1] and info.world_size == 2
    for h in (b, spare):
        h.shutdown()


def test_a_vanished_state_clears_dead_verdicts_and_starts_the_outage_grace():
    """The server lost the state and with it the keep-alive records: a node must not go on
    removing the nodes it judged dead in the lost state (they re-join with fresh records)."""
    from rdzv_core.dynamic.executor import _StateHolder
    from rdzv_core.dynamic.liveness import _StateLiveness

    run = Run("vanish")
    handler = run.handler(2, 2)
    backend = run.backend()
    holder = _StateHolder(backend, handler.settings, _StateLiveness(handler.settings), "me", lambda nodes: None)
    backend.set_state(b"")  # any state: the holder reads a token
    holder._dead.add("other")
    holder.token = backend.get_state()[1]
    backend.lose_data()
    holder.sync()
    assert holder.token is None and not holder._dead
    assert not holder._guard.may_sweep
