"""Faults of the Redis server under real handlers: a frozen server (SIGSTOP), a restart that
loses every key (no persistence), a server that stays down, and many runs on one server.

Handlers are threads with distinct node identities in this process; they come from the
registry (``get_rendezvous_handler``), as an agent would create them. Every wait is bounded.
"""

from __future__ import annotations

import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from rdzv_core.api import RendezvousConnectionError, RendezvousParameters, RendezvousTimeoutError
from rdzv_core.registry import get_rendezvous_handler
from rdzv_redis import create_backend
from tests.integration.rounds import assert_one_round, rendezvous, timed
from tests.servers import paused

pytestmark = pytest.mark.integration

#: Every wait of these tests is bounded by this (seconds).
BOUND = 30
#: Small timeouts for fault tests: a call gives up after ~1 s of retries, 0.5 s per attempt.
FAST = dict(
    socket_timeout=0.5,
    connect_timeout=0.5,
    retry_timeout=1.0,
    join_timeout=BOUND,
    last_call_timeout=0.3,
    heartbeat_timeout=1,
    close_timeout=3,
)


@pytest.fixture
def make_handlers():
    """``make(endpoint, run_id, n, min_nodes, max_nodes, **config)`` -> n handlers (registry)."""
    made = []

    def make(endpoint, run_id, n, min_nodes, max_nodes, **config):
        params = RendezvousParameters("redis", endpoint, run_id, min_nodes, max_nodes, local_addr="127.0.0.1", **config)
        handlers = [get_rendezvous_handler(params) for _ in range(n)]
        made.extend(handlers)
        return handlers

    yield make
    for handler in made:
        handler._stop_heartbeats()
        handler.backend.close()
        handler._store.close()


def wait_until(predicate, what, timeout=BOUND):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


# -- a frozen server -------------------------------------------------------------------------


@pytest.mark.slow
def test_frozen_server_every_call_ends_by_its_deadline_and_sigcont_resumes(
    own_redis_server, make_handlers, redis_run_id
):
    server = own_redis_server()
    handlers = make_handlers(
        server.endpoint, redis_run_id, 3, 3, 3, keep_alive_interval=0.3, keep_alive_max_attempt=2, **FAST
    )
    other = make_handlers(server.endpoint, redis_run_id + "-other", 1, 1, 1, **FAST)[0]
    infos = rendezvous(handlers)
    assert_one_round(infos)
    other.next_rendezvous()
    store = infos[0].store
    store.set_timeout(BOUND)  # the store's own timeout is long: the retry budget must end the call

    calls = {
        "num_nodes_waiting": handlers[0].num_nodes_waiting,
        "next_rendezvous": handlers[1].next_rendezvous,
        "is_closed": handlers[2].is_closed,
        "store.get": lambda: store.get("never-set"),
        "store.set": lambda: store.set("k", b"v"),
        "store.add": lambda: store.add("n", 1),
        "store.wait": lambda: store.wait(["never-set"]),
        "shutdown (other run)": other.shutdown,
        # a new client of the process must PING the server first
        "create_backend": lambda: create_backend(
            RendezvousParameters("redis", server.endpoint, "fresh", 1, 1, **{**FAST, "socket_timeout": 0.45})
        ),
    }
    results: dict[str, tuple[float, object]] = {}
    with paused(server):  # SIGSTOP, or docker pause for a container
        threads = [
            threading.Thread(target=lambda n=name, f=fn: results.__setitem__(n, timed(f))) for name, fn in calls.items()
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(BOUND)
        assert not any(t.is_alive() for t in threads), "a call hangs on the frozen server"

    print(
        "\n[measured] frozen redis (retry_timeout=1, socket_timeout=0.5): "
        + ", ".join(f"{n} {s:.2f} s" for n, (s, _) in results.items())
    )
    for name, (seconds, outcome) in results.items():
        # retry budget + one socket timeout + waiting for a keep-alive tick holding the lock
        assert seconds < 1.0 + 0.5 + 1.5 + 2.0, f"{name} took {seconds:.2f} s"
        if name == "shutdown (other run)":
            assert outcome is False
        elif name == "num_nodes_waiting" and isinstance(outcome, int):
            pass  # no change was announced: answered from the node's standing, no request
        else:
            assert isinstance(outcome, (RendezvousConnectionError, RendezvousTimeoutError)), f"{name} -> {outcome!r}"
            assert "Redis at redis://127.0.0.1" in str(outcome) or isinstance(outcome, RendezvousTimeoutError)

    # SIGCONT: the handlers carry on; a new round forms (whatever the frozen calls left).
    start = time.monotonic()
    assert_one_round(rendezvous(handlers))
    print(f"[measured] frozen redis: new round {time.monotonic() - start:.2f} s after SIGCONT")


# -- a restart that loses every key ----------------------------------------------------------


def test_restart_mid_rendezvous_loses_the_state_and_the_round_still_forms(
    own_redis_server, make_handlers, redis_run_id
):
    server = own_redis_server()
    handlers = make_handlers(server.endpoint, redis_run_id, 3, 3, 3, **{**FAST, "retry_timeout": 10})
    with ThreadPoolExecutor(max_workers=3) as pool:
        waiting = [pool.submit(h.next_rendezvous) for h in handlers[:2]]
        wait_until(lambda: all(len(h.state.participants) == 2 for h in handlers[:2]), "two nodes to join")
        server.restart()  # no persistence: the state, liveness records and join queue are gone
        assert not any(f.done() for f in waiting)
        late = pool.submit(handlers[2].next_rendezvous)
        infos = [f.result(timeout=BOUND) for f in [*waiting, late]]
    assert_one_round(infos)
    infos[0].store.set("k", b"after restart")
    assert infos[2].store.get("k") == b"after restart"


def test_restart_mid_run_reports_the_stale_round_and_a_new_round_forms(own_redis_server, make_handlers, redis_run_id):
    server = own_redis_server()
    handlers = make_handlers(
        server.endpoint, redis_run_id, 2, 2, 2, keep_alive_interval=0.2, **{**FAST, "retry_timeout": 5}
    )
    assert_one_round(rendezvous(handlers))
    assert [h.num_nodes_waiting() for h in handlers] == [0, 0]
    server.restart()  # the round's state is lost while the job trains
    # Each agent must learn that its rank is stale (torch's handler reports 0 forever).
    wait_until(lambda: all(h.num_nodes_waiting() > 0 for h in handlers), "the lost round to be reported")
    infos = rendezvous(handlers)
    assert_one_round(infos)
    assert [h.num_nodes_waiting() for h in handlers] == [0, 0]
    infos[1].store.set("k", b"new round")
    assert infos[0].store.get("k") == b"new round"


# -- a server that stays down, or comes back ---------------------------------------------------


def test_down_server_is_a_connection_error_after_the_retry_budget_then_recovers(
    own_redis_server, make_handlers, redis_run_id
):
    server = own_redis_server()
    budget = 2.0
    handlers = make_handlers(server.endpoint, redis_run_id, 2, 2, 2, **{**FAST, "retry_timeout": budget})
    assert_one_round(rendezvous(handlers))
    server.kill()
    for name, call in (
        ("num_nodes_waiting", handlers[0].num_nodes_waiting),
        ("next_rendezvous", handlers[1].next_rendezvous),
    ):
        seconds, outcome = timed(call)
        if name == "num_nodes_waiting" and outcome == 0:
            continue  # no change announced before the listener saw the connection drop: the cached standing
        assert isinstance(outcome, RendezvousConnectionError), f"{name} -> {outcome!r}"
        assert "unreachable" in str(outcome) and server.endpoint in str(outcome)
        # not before the budget (minus the last, largest back-off of 1 s), not long after it
        assert budget - 1.0 <= seconds < budget + 2.0, f"{name} gave up after {seconds:.2f} s"
    server.start()  # back, empty
    assert_one_round(rendezvous(handlers))


def test_outage_shorter_than_the_retry_budget_is_invisible(own_redis_server, make_handlers, redis_run_id):
    server = own_redis_server()
    handlers = make_handlers(server.endpoint, redis_run_id, 2, 2, 2, **{**FAST, "retry_timeout": 10})
    assert_one_round(rendezvous(handlers))
    server.kill()
    timer = threading.Timer(1.0, server.start)
    timer.start()
    try:
        infos = rendezvous(handlers)  # no error surfaces: the calls retry until it is back
    finally:
        timer.join()
    assert_one_round(infos)


# -- many runs on one server --------------------------------------------------------------------


@pytest.mark.slow
def test_fifty_concurrent_runs_never_see_each_other(redis_server, make_handlers, redis_raw):
    runs = [f"iso-{i}-{uuid.uuid4().hex[:6]}" for i in range(50)]
    groups = {
        run: make_handlers(redis_server.endpoint, run, 2, 2, 2, join_timeout=BOUND, last_call_timeout=0.3)
        for run in runs
    }
    handlers = [h for group in groups.values() for h in group]
    infos = dict(zip(handlers, rendezvous(handlers, timeout=60), strict=True))
    members = {run: {h.node.key for h in group} for run, group in groups.items()}
    for run, group in groups.items():
        assert_one_round([infos[h] for h in group])
        for handler in group:
            assert set(handler.state.participants) == members[run] and handler.state.run_id == run
        rank0 = next(infos[h] for h in group if infos[h].rank == 0)
        rank0.store.set("who", run)
    for run, group in groups.items():
        assert {infos[h].store.get("who") for h in group} == {run.encode()}
    tokens = {run: group[0].backend.round_standing("observer").change_id for run, group in groups.items()}
    for run in runs:  # every key of a run carries the run's hash tag
        assert all(key.startswith(f"rdzv:{{{run}}}:".encode()) for key in redis_raw.scan_iter(match=f"rdzv:{{{run}}}*"))

    closed = runs[0]
    groups[closed][0].set_closed()
    assert groups[closed][1].is_closed()
    for run in runs[1:]:
        group = groups[run]
        assert not group[0].is_closed()
        assert group[1].num_nodes_waiting() == 0
        assert group[0].backend.round_standing("observer").change_id == tokens[run]  # not written by the close


# -- a rank 0 that never publishes the bootstrap address ------------------------------------------


def test_waiting_for_rank_0s_bootstrap_address_ends_by_the_join_deadline(redis_backend_factory, redis_run_id):
    """Rank 0 loses the backend right after the round completes, before it publishes
    MASTER_ADDR/MASTER_PORT: the other ranks give up by the join deadline, not after the
    store's own timeout (300 s)."""
    from datetime import timedelta

    from rdzv_core.dynamic import DynamicRendezvousHandler, RendezvousTimeout

    join = 3.0
    handlers = []
    for _ in range(2):
        backend, store = redis_backend_factory(redis_run_id)

        def failing_multi_set(keys, values, real=store.multi_set):
            if any(key.endswith("MASTER_ADDR") for key in keys):
                raise RendezvousConnectionError("simulated: rank 0 lost the backend")
            real(keys, values)

        store.multi_set = failing_multi_set
        timeout = RendezvousTimeout(
            join=timedelta(seconds=join), last_call=timedelta(seconds=0.2), heartbeat=timedelta(seconds=1)
        )
        handlers.append(
            DynamicRendezvousHandler.from_backend(
                redis_run_id, store, backend, 2, 2, local_addr="127.0.0.1", timeout=timeout
            )
        )
    try:
        assert handlers[0]._store.timeout.total_seconds() >= 300
        with ThreadPoolExecutor(max_workers=2) as pool:
            outcomes = [f.result(timeout=BOUND) for f in [pool.submit(timed, h.next_rendezvous) for h in handlers]]
        kinds = sorted(type(outcome).__name__ for _, outcome in outcomes)
        assert kinds == ["RendezvousConnectionError", "StoreTimeoutError"], outcomes
        assert max(seconds for seconds, _ in outcomes) < join + 3.0
    finally:
        for handler in handlers:
            handler._stop_heartbeats()


# -- what a process remembers must not outlive the server's data -----------------------------------


def test_a_state_recreated_after_data_loss_is_writable_by_a_process_that_knew_a_newer_one(own_redis_server):
    """Redis lost its data (restart without persistence); another process recreated the state,
    whose versions start at 1 again. A process that had seen version 5 must take the server's
    word: its compare-and-sets reach the server instead of being refused locally as stale
    with the lost state, forever."""
    server = own_redis_server()
    ours, our_store = create_backend(RendezvousParameters("redis", server.endpoint, "loss", 1, 1, retry_timeout=5))
    theirs, their_store = create_backend(
        RendezvousParameters("redis", server.endpoint, "loss", 1, 1, retry_timeout=5, socket_timeout=9)
    )
    try:
        assert theirs._client is not ours._client  # another client: as another process
        _, token, _ = ours.set_state(b"v1")
        for i in range(2, 6):
            _, token, _ = ours.set_state(b"v%d" % i, token)
        assert token.startswith("5-")
        server.restart()  # everything is gone
        _, new_token, has_set = theirs.set_state(b"recreated")
        assert has_set and new_token.startswith("1-")
        assert ours.get_state() == (b"recreated", new_token)
        state, token, has_set = ours.set_state(b"ours", new_token)
        assert has_set and state == b"ours" and theirs.get_state() == (b"ours", token)
    finally:
        for thing in (ours, our_store, theirs, their_store):
            thing.close()
