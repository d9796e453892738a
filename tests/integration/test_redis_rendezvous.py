"""Multi-node rendezvous on a real Redis: many handlers (threads with distinct node
identities) driving rdzv_core.dynamic over RedisRendezvousBackend and RedisStore."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest

from rdzv_core.api import RendezvousClosedError, RendezvousParameters

pytestmark = pytest.mark.integration

dynamic = pytest.importorskip("rdzv_core.dynamic")

#: Every wait of these tests is bounded by this (seconds).
BOUND = 20


@pytest.fixture
def make_handler(redis_backend_factory, redis_run_id):
    """``make(run_id=None, min_nodes=2, max_nodes=8, keep_alive_interval=5, attempts=3)``."""
    handlers = []

    def make(run_id=None, min_nodes=2, max_nodes=8, keep_alive_interval=5.0, attempts=3):
        run_id = run_id or redis_run_id
        backend, store = redis_backend_factory(run_id)
        timeout = dynamic.RendezvousTimeout(
            join=timedelta(seconds=BOUND),
            last_call=timedelta(seconds=0.3),
            close=timedelta(seconds=5),
            heartbeat=timedelta(seconds=2),
        )
        handler = dynamic.DynamicRendezvousHandler.from_backend(
            run_id,
            store,
            backend,
            min_nodes,
            max_nodes,
            local_addr="127.0.0.1",
            timeout=timeout,
            keep_alive_interval=keep_alive_interval,
            keep_alive_max_attempt=attempts,
        )
        handlers.append(handler)
        return handler

    yield make
    for handler in handlers:
        handler._stop_heartbeats()


def rendezvous(handlers, pool=None):
    """Run next_rendezvous on all handlers concurrently; return their infos in order."""
    own = pool is None
    pool = pool or ThreadPoolExecutor(max_workers=len(handlers))
    try:
        futures = [pool.submit(h.next_rendezvous) for h in handlers]
        return [f.result(timeout=BOUND) for f in futures]
    finally:
        if own:
            pool.shutdown(wait=False)


def wait_until(predicate, what):
    deadline = time.monotonic() + BOUND
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_eight_nodes_get_ranks_0_to_7(make_handler):
    handlers = [make_handler(min_nodes=2, max_nodes=8) for _ in range(8)]
    infos = rendezvous(handlers)
    assert sorted(info.rank for info in infos) == list(range(8))
    assert {info.world_size for info in infos} == {8}
    assert len({(i.bootstrap_store_info.master_addr, i.bootstrap_store_info.master_port) for i in infos}) == 1
    # the round's store is shared by all nodes
    infos[0].store.set("hello", b"from rank 0")
    assert all(info.store.get("hello") == b"from rank 0" for info in infos)
    assert handlers[0].num_nodes_waiting() == 0


def test_scale_up_through_the_wait_list(make_handler):
    first = [make_handler(min_nodes=2, max_nodes=4) for _ in range(2)]
    infos = rendezvous(first)
    assert sorted(i.rank for i in infos) == [0, 1] and infos[0].world_size == 2
    assert first[0].num_nodes_waiting() == 0

    pool = ThreadPoolExecutor(max_workers=3)
    try:
        newcomer = make_handler(min_nodes=2, max_nodes=4)
        late = pool.submit(newcomer.next_rendezvous)
        wait_until(lambda: all(h.num_nodes_waiting() > 0 for h in first), "the old members to see the waiting node")
        assert not late.done()  # it waits for the next round
        again = rendezvous(first, pool)
        infos = again + [late.result(timeout=BOUND)]
    finally:
        pool.shutdown(wait=False)
    assert sorted(i.rank for i in infos) == [0, 1, 2]
    assert {i.world_size for i in infos} == {3}


def test_a_node_whose_heartbeats_stop_is_removed(make_handler):
    handlers = [make_handler(min_nodes=2, max_nodes=3, keep_alive_interval=0.2, attempts=2) for _ in range(3)]
    infos = rendezvous(handlers)
    assert {i.world_size for i in infos} == {3}
    silent = handlers[2]
    silent._stop_heartbeats()  # the node hangs: no more keep-alives
    survivors = handlers[:2]
    wait_until(lambda: all(h.num_nodes_waiting() > 0 for h in survivors), "the silent node to be declared dead")
    infos = rendezvous(survivors)
    assert sorted(i.rank for i in infos) == [0, 1] and {i.world_size for i in infos} == {2}
    assert silent.node.key not in survivors[0].state.participants


def test_close(make_handler):
    handlers = [make_handler(min_nodes=2, max_nodes=2) for _ in range(2)]
    rendezvous(handlers)
    assert not handlers[1].is_closed()
    handlers[0].set_closed()
    assert handlers[1].is_closed()
    with pytest.raises(RendezvousClosedError):
        handlers[1].next_rendezvous()
    with pytest.raises(RendezvousClosedError):
        make_handler(min_nodes=2, max_nodes=2).next_rendezvous()


def test_two_runs_on_one_server_never_collide(make_handler, redis_raw):
    run_a, run_b = f"run-a-{time.monotonic_ns()}", f"run-b-{time.monotonic_ns()}"
    group_a = [make_handler(run_a, min_nodes=3, max_nodes=3) for _ in range(3)]
    group_b = [make_handler(run_b, min_nodes=3, max_nodes=3) for _ in range(3)]
    infos = rendezvous(group_a + group_b)
    for group in (infos[:3], infos[3:]):
        assert sorted(i.rank for i in group) == [0, 1, 2] and {i.world_size for i in group} == {3}
    infos[0].store.set("who", b"a")
    infos[3].store.set("who", b"b")
    assert [i.store.get("who") for i in infos] == [b"a"] * 3 + [b"b"] * 3
    assert set(group_a[0].state.participants).isdisjoint(group_b[0].state.participants)
    assert redis_raw.exists(f"rdzv:{{{run_a}}}:round") and redis_raw.exists(f"rdzv:{{{run_b}}}:round")


def test_handlers_from_the_registry(redis_server, redis_run_id):
    from rdzv_core.registry import get_rendezvous_handler

    params = RendezvousParameters(
        "redis", redis_server.endpoint, redis_run_id, 2, 2, join_timeout=BOUND, last_call_timeout=0.3
    )
    handlers = [get_rendezvous_handler(params) for _ in range(2)]
    try:
        assert {h.get_backend() for h in handlers} == {"redis"}
        infos = rendezvous(handlers)
        assert sorted(i.rank for i in infos) == [0, 1]
    finally:
        for handler in handlers:
            handler.shutdown()
            handler.backend.close()
            handler._store.close()


def test_a_closed_run_id_is_free_again_after_closed_ttl(redis_params, redis_raw, redis_run_id):
    """torchrun's default run id is 'none': a second job under it must not meet the first
    job's closed record for key_ttl (24 h). Once closed, the run's keys expire after
    closed_ttl; until then late nodes are told it is closed, and how to go on."""
    from rdzv_core.registry import get_rendezvous_handler

    params = redis_params(closed_ttl=1, last_call_timeout=0.1, join_timeout=10)
    first = get_rendezvous_handler(params)
    assert first.next_rendezvous().world_size == 1
    assert first.shutdown()  # closes the rendezvous
    ttl = redis_raw.pttl(f"rdzv:{{{redis_run_id}}}:round")
    assert 0 < ttl <= 1000  # not key_ttl (24 h)
    late = get_rendezvous_handler(params)
    with pytest.raises(RendezvousClosedError, match="closed_ttl"):
        late.next_rendezvous()
    deadline = time.monotonic() + 10
    while redis_raw.exists(f"rdzv:{{{redis_run_id}}}:round"):
        assert time.monotonic() < deadline, "the closed record did not expire"
        time.sleep(0.05)
    again = get_rendezvous_handler(params)
    try:
        assert again.next_rendezvous().world_size == 1  # a fresh record: the new job runs
    finally:
        again.shutdown()
