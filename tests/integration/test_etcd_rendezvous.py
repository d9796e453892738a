"""Multi-node rendezvous on a real etcd, v2 and v3: handlers in threads with distinct node
identities drive rdzv_core.dynamic over EtcdRendezvousBackend and EtcdStore.

Waits for a condition block on the backend's change notification (an etcd watch), bounded
by ``BOUND``; no test sleeps to let something happen.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest

from rdzv_core.api import RendezvousClosedError, RendezvousConnectionError
from rdzv_core.registry import get_rendezvous_handler
from rdzv_core.state import decode_state
from rdzv_etcd.backend import EtcdRendezvousBackend
from tests.fixtures_etcd import etcd_params, unique_run_id

pytestmark = pytest.mark.integration

dynamic = pytest.importorskip("rdzv_core.dynamic")

#: Every wait of these tests is bounded by this (seconds).
BOUND = 30


class MortalBackend(EtcdRendezvousBackend):
    """A backend whose node can be 'killed' (keep-alives fail like a lost network) or
    'paused' (keep-alives silently do not happen, like a long GC pause)."""

    dead = False
    paused = False

    def keep_alive(self, node: str, ttl: float) -> None:
        if self.dead:
            raise RendezvousConnectionError("simulated: this node is dead")
        if not self.paused:
            super().keep_alive(node, ttl)


@pytest.fixture
def make_handler(make_etcd, etcd_api):
    """``make(run_id, min_nodes=2, max_nodes=8, keep_alive_interval=5, attempts=3,
    last_call=0.3)``; each handler has its own backend (connection pool), as separate
    machines would."""
    handlers = []

    def make(run_id, min_nodes=2, max_nodes=8, keep_alive_interval=5.0, attempts=3, last_call=0.3, join=BOUND):
        backend, store = make_etcd(etcd_api, run_id)
        backend = MortalBackend(backend.kv, run_id, key_ttl=600)
        store.set_timeout(BOUND)  # bootstrap (MASTER_ADDR) waits: bounded like everything here
        timeout = dynamic.RendezvousTimeout(
            join=timedelta(seconds=join),
            last_call=timedelta(seconds=last_call),
            close=timedelta(seconds=5),
            heartbeat=timedelta(seconds=2),
        )
        handler = dynamic.DynamicRendezvousHandler.from_backend(
            run_id, store, backend, min_nodes, max_nodes, local_addr="127.0.0.1", timeout=timeout,
            keep_alive_interval=keep_alive_interval, keep_alive_max_attempt=attempts,
        )  # fmt: skip
        handlers.append(handler)
        return handler

    yield make
    for handler in handlers:
        handler.backend.dead = True
        handler._stop_heartbeats()


def rendezvous(handlers):
    """Run next_rendezvous on all handlers concurrently; return their infos in order."""
    with ThreadPoolExecutor(max_workers=len(handlers)) as pool:
        futures = [pool.submit(h.next_rendezvous) for h in handlers]
        return [f.result(timeout=BOUND) for f in futures]


def wait_until(predicate, backend, what):
    """Block until ``predicate()`` holds, waking on every change of the run's state.

    ``predicate`` must depend on the backend's state only (the read here happens before it
    is evaluated, so a change between the two wakes the wait)."""
    deadline = time.monotonic() + BOUND
    while True:
        current = backend.get_state()
        if predicate():
            return
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"timed out waiting for {what}"
        backend.wait_for_change(None if current is None else current[1], remaining)


def participants(backend):
    """The participants in the run's state as stored in etcd (not a handler's cached copy)."""
    current = backend.get_state()
    return {} if current is None else decode_state(current[0], backend.keys.run_id).participants


def test_eight_nodes_get_ranks_0_to_7(make_handler):
    run_id = unique_run_id()
    # The round completes as soon as the 8th node joins; the long last call only makes sure
    # that it is not completed earlier, with fewer nodes, on a slow machine.
    handlers = [make_handler(run_id, min_nodes=2, max_nodes=8, last_call=BOUND / 2) for _ in range(8)]
    infos = rendezvous(handlers)
    assert sorted(info.rank for info in infos) == list(range(8))
    assert {info.world_size for info in infos} == {8}
    assert len({(i.bootstrap_store_info.master_addr, i.bootstrap_store_info.master_port) for i in infos}) == 1
    # the round's store is one etcd prefix shared by all nodes
    infos[3].store.set("from-3", b"hello")
    assert infos[5].store.get("from-3") == b"hello"
    assert all(h.num_nodes_waiting() == 0 for h in handlers)


def test_scale_up_through_the_wait_list(make_handler):
    run_id = unique_run_id()
    first = [make_handler(run_id, min_nodes=2, max_nodes=4) for _ in range(2)]
    infos = rendezvous(first)
    assert sorted(i.rank for i in infos) == [0, 1]
    round_before = first[0].state.round

    late = make_handler(run_id, min_nodes=2, max_nodes=4)
    with ThreadPoolExecutor(max_workers=3) as pool:
        late_future = pool.submit(late.next_rendezvous)
        wait_until(
            lambda: all(h.num_nodes_waiting() > 0 for h in first), first[0].backend, "the late node on the wait list"
        )
        old_futures = [pool.submit(h.next_rendezvous) for h in first]  # agents re-rendezvous
        infos = [f.result(timeout=BOUND) for f in [*old_futures, late_future]]
    assert sorted(i.rank for i in infos) == [0, 1, 2]
    assert {i.world_size for i in infos} == {3}
    assert first[0].state.round > round_before


def test_a_node_whose_keep_alives_stop_is_removed(make_handler):
    run_id = unique_run_id()
    handlers = [make_handler(run_id, min_nodes=2, max_nodes=3, keep_alive_interval=0.5, attempts=4) for _ in range(3)]
    rendezvous(handlers)
    removed = threading.Event()
    survivors, victim = handlers[:2], handlers[2]
    for handler in survivors:
        handler.add_event_listener(lambda event: event.name == "removed_dead_nodes" and removed.set())

    victim.backend.dead = True  # its keep-alives fail from now on
    assert removed.wait(BOUND), "no survivor removed the dead node"
    wait_until(
        lambda: victim.node.key not in participants(victim.backend), victim.backend, "the dead node out of the state"
    )
    assert survivors[0].num_nodes_waiting() > 0  # the round lost a member: re-rendezvous
    assert victim.backend.heartbeat_ages([victim.node.key]) == [None]  # its record was dropped

    infos = rendezvous(survivors)
    assert sorted(i.rank for i in infos) == [0, 1]
    assert {i.world_size for i in infos} == {2}


def test_close(make_handler):
    run_id = unique_run_id()
    handlers = [make_handler(run_id, min_nodes=2, max_nodes=2) for _ in range(2)]
    rendezvous(handlers)
    handlers[0].set_closed()
    assert handlers[1].is_closed()
    latecomer = make_handler(run_id, min_nodes=2, max_nodes=2)
    with pytest.raises(RendezvousClosedError):
        latecomer.next_rendezvous()


def test_handlers_from_the_registry(etcd_server, etcd_api):
    run_id = unique_run_id()
    params = [
        etcd_params(etcd_server, etcd_api, run_id, min_nodes=2, max_nodes=2, last_call_timeout=0.3, join_timeout=BOUND)
        for _ in range(2)
    ]
    handlers = [get_rendezvous_handler(p) for p in params]
    try:
        assert {h.get_backend() for h in handlers} == {f"etcd-{etcd_api}"}
        infos = rendezvous(handlers)
        assert sorted(i.rank for i in infos) == [0, 1]
    finally:
        for handler in handlers:
            handler.shutdown()
    assert handlers[0].is_closed()


def test_a_node_removed_while_joining_joins_again(make_handler):
    """A node admitted through the join queue, declared dead (a pause) before the round
    completes, enqueues again when it resumes, and the round completes with it."""
    run_id = unique_run_id()
    first = [
        make_handler(run_id, min_nodes=3, max_nodes=3, keep_alive_interval=0.5, attempts=4, join=BOUND)
        for _ in range(2)
    ]
    paused, watcher = first
    removed = threading.Event()
    watcher.add_event_listener(lambda event: event.name == "removed_dead_nodes" and removed.set())
    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = [pool.submit(h.next_rendezvous) for h in first]
        wait_until(lambda: len(participants(watcher.backend)) == 2, watcher.backend, "two participants")
        paused.backend.paused = True  # like a long GC pause: no keep-alives
        assert removed.wait(BOUND), "the paused node was not removed"
        paused.backend.paused = False
        late = make_handler(run_id, min_nodes=3, max_nodes=3, keep_alive_interval=0.5, attempts=4, join=BOUND)
        futures.append(pool.submit(late.next_rendezvous))
        infos = [f.result(timeout=BOUND) for f in futures]
    assert sorted(i.rank for i in infos) == [0, 1, 2]


def test_a_closed_etcd_v3_run_id_is_free_again_after_closed_ttl(etcd_server):
    """As on Redis: the summary of a closed etcd-v3 membership record carries a closed_ttl
    lease, so the next job under the same run id forms once it expired."""
    params = etcd_params(
        etcd_server, "v3", min_nodes=1, max_nodes=1, closed_ttl=1, last_call_timeout=0.1, join_timeout=10
    )
    first = get_rendezvous_handler(params)
    assert first.next_rendezvous().world_size == 1
    assert first.shutdown()
    late = get_rendezvous_handler(params)
    with pytest.raises(RendezvousClosedError, match="closed_ttl"):
        late.next_rendezvous()
    deadline = time.monotonic() + 15  # etcd rounds a 1 s lease up to its minimum TTL
    while late.backend.membership_state() is not None:
        assert time.monotonic() < deadline, "the closed record did not expire"
        time.sleep(0.1)
    again = get_rendezvous_handler(params)
    try:
        assert again.next_rendezvous().world_size == 1
    finally:
        again.shutdown()
        late.backend.close()
