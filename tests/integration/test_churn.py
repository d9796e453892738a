"""Churn at small N against real servers (a private Redis, a private etcd through the v3 API),
through the public handler API: nodes die without leaving, the server loses its data under a
waiting node and under a complete round, a redundant node outlives its join timeout.

Each simulated node has a handler on a backend and client of its own (:mod:`tests.nodeproc`);
nodes that die run in a child process killed with SIGKILL. Survivors behave like agents: they
poll ``num_nodes_waiting()`` every 0.1 s and call ``next_rendezvous()`` once it is > 0. A node's
own view of where it stands comes from ``handler.standing`` (``rounds.role_of``). Every wait is
bounded; the bounds are the protocol's own times plus ``SLACK`` for a loaded 2-core machine,
and only guard against hangs.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FuturesTimeoutError
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import pytest

from rdzv_core.api import RendezvousParameters, RendezvousTimeoutError
from tests.fixtures_etcd import private_etcd, unique_run_id
from tests.integration.rounds import agent, assert_one_round, role_of, run_all, wait_until
from tests.nodeproc import Node, NodeProcess, create_node

pytestmark = pytest.mark.integration

#: Every wait of these tests is bounded by this (seconds).
BOUND = 60
INTERVAL, ATTEMPTS = 0.5, 2
#: A node is dead after this long without a keep-alive.
DEAD_AFTER = INTERVAL * ATTEMPTS
#: Allowance for a loaded 2-core machine on top of the protocol's own times.
SLACK = 10.0
#: Handler settings of every node.
COMMON = dict(keep_alive_interval=INTERVAL, keep_alive_max_attempt=ATTEMPTS, heartbeat_timeout=2, close_timeout=5)


# -- servers -------------------------------------------------------------------------------------


@dataclass
class ChurnServer:
    """A private server of ``backend`` that a test may make lose all its data."""

    backend: str
    endpoint: str
    config: dict[str, Any]
    _lose_data: Any = field(repr=False)

    def lose_data(self) -> float:
        """Restart the server empty, on the same port; return when it is back (monotonic)."""
        self._lose_data()
        return time.monotonic()


@pytest.fixture(params=["redis", "etcd-v3"])
def server(request):
    if request.param == "redis":
        redis = request.getfixturevalue("own_redis_server")()
        # restart() without keep_data: no persistence, every key is gone
        yield ChurnServer("redis", redis.endpoint, {"retry_timeout": 10}, redis.restart)
        return
    with private_etcd("churn") as etcd:

        def lose_data() -> None:
            etcd.restart(keep_data=False, kill=True)  # a new, empty member on the same port

        yield ChurnServer("etcd-v3", etcd.endpoint, {"read_timeout": 5}, lose_data)


# -- runs ----------------------------------------------------------------------------------------


class Run:
    """One run id on ``server``: its nodes in this process and in child processes."""

    def __init__(self, server: ChurnServer, min_nodes: int, max_nodes: int, **config: Any) -> None:
        self.params = RendezvousParameters(
            server.backend,
            server.endpoint,
            unique_run_id("churn"),
            min_nodes,
            max_nodes,
            local_addr="127.0.0.1",
            **{**COMMON, **server.config, **config},
        )
        self.nodes: list[Node] = []
        self.processes: list[NodeProcess] = []

    def node(self) -> Node:
        node = create_node(self.params)
        self.nodes.append(node)
        return node

    def spawn(self, count: int) -> NodeProcess:
        process = NodeProcess(self.params, count)
        self.processes.append(process)
        return process

    def close(self) -> None:
        """Kill the child processes, shut the nodes down (this also ends pending joins)."""
        processes, self.processes = self.processes, []
        for process in processes:
            process.close()
        nodes, self.nodes = self.nodes, []
        if nodes:
            with ThreadPoolExecutor(max_workers=len(nodes)) as pool:
                list(pool.map(Node.close, nodes))


@pytest.fixture
def make_run(server):
    runs: list[Run] = []

    def make(min_nodes: int, max_nodes: int, **config: Any) -> Run:
        run = Run(server, min_nodes, max_nodes, **config)
        runs.append(run)
        return run

    yield make
    for run in runs:
        run.close()


def result_by(future, deadline: float, what: str) -> Any:
    """``future``'s result by ``deadline`` (monotonic); AssertionError naming ``what`` otherwise."""
    try:
        return future.result(timeout=max(0.0, deadline - time.monotonic()))
    except FuturesTimeoutError:
        raise AssertionError(f"{what} did not return in time") from None


# -- 1. mass failure -------------------------------------------------------------------------------


def test_mass_failure_the_survivors_form_one_new_round(server, make_run):
    """8 nodes (min 6, max 8) in a round, 2 die: the 6 survivors form ONE new round (ranks
    0..5, world size 6) within dead_after + last_call + slack. Three times over."""
    last_call = 1.0
    for attempt in range(3):
        run = make_run(6, 8, join_timeout=BOUND, last_call_timeout=last_call)
        dying = run.spawn(2)
        survivors = [run.node() for _ in range(6)]
        dying.wait_ready(BOUND)
        first = run_all([n.handler.next_rendezvous for n in survivors])
        assert_one_round(first + dying.infos(BOUND))
        assert len(first) + dying.count == 8

        dying.kill()
        killed_at = time.monotonic()
        deadline = killed_at + DEAD_AFTER + last_call + SLACK
        results = run_all([partial(agent, n.handler, deadline) for n in survivors], timeout=deadline - time.monotonic())
        took = time.monotonic() - killed_at
        infos = [info for _, info in results]
        print(f"\n[measured] {server.backend} attempt {attempt}: 2 of 8 killed; noticed after "
              f"{min(s for s, _ in results) - killed_at:.2f}-{max(s for s, _ in results) - killed_at:.2f} s, new round of 6 after {took:.2f} s")  # fmt: skip
        assert_one_round(infos)
        assert len(infos) == 6
        run.close()


# -- 2. a queued node, then the server loses its data ----------------------------------------------


def test_a_node_waiting_for_a_round_survives_server_data_loss(server, make_run):
    """min = max = 2: A joins and waits; the server restarts empty; B joins. Both get ranks
    0 and 1 of one round, A within keep_alive_interval + slack of the server being back (far
    below its join timeout of 60 s)."""
    run = make_run(2, 2, join_timeout=60, last_call_timeout=0.3)
    a, b = run.node(), run.node()
    pool = ThreadPoolExecutor(max_workers=2)
    try:
        fa = pool.submit(lambda: (a.handler.next_rendezvous(), time.monotonic()))
        wait_until(lambda: fa.done() or role_of(a.handler) == "participant", "A to join the open round", timeout=BOUND)
        assert not fa.done(), f"A's next_rendezvous ended alone: {fa.exception() or fa.result()}"

        back = server.lose_data()
        assert not fa.done(), f"A's next_rendezvous ended during the data loss: {fa.exception() or fa.result()}"
        fb = pool.submit(lambda: (b.handler.next_rendezvous(), time.monotonic()))

        deadline = back + INTERVAL + SLACK
        a_info, a_done = result_by(
            fa, deadline, f"A's next_rendezvous (within {INTERVAL + SLACK} s of the server being back)"
        )
        b_info, _ = result_by(fb, deadline + SLACK, "B's next_rendezvous")
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    print(f"\n[measured] {server.backend}: A got its rank {a_done - back:.2f} s after the server came back empty")
    assert_one_round([a_info, b_info])
    a_info.store.set("k", b"after the loss")
    assert b_info.store.get("k") == b"after the loss"


# -- 3. the redundancy list does not count against the join deadline -------------------------------


def test_a_redundant_node_gets_a_fresh_join_deadline_when_a_place_frees_up(server, make_run):
    """min = max = 2, join timeout 3 s: A and B form a round; C lands in the redundancy list
    and stays there 4 s (torch applies no join deadline there). A dies: C leaves the
    redundancy list for the wait list with a fresh join deadline (torch resets it), so it is
    not failed with RendezvousTimeoutError and gets a rank in the next round, with B."""
    join = 3.0
    run = make_run(2, 2, join_timeout=join, last_call_timeout=0.3)
    b = run.node()
    a = run.spawn(1)
    a.wait_ready(BOUND)
    b_first = b.handler.next_rendezvous()
    assert_one_round([b_first, *a.infos(BOUND)])

    c = run.node()
    pool = ThreadPoolExecutor(max_workers=2)
    try:
        fc = pool.submit(c.handler.next_rendezvous)
        wait_until(
            lambda: fc.done() or role_of(c.handler) == "redundant", "C to land in the redundancy list", timeout=join
        )
        assert not fc.done(), f"C's next_rendezvous ended: {fc.exception() or fc.result()}"
        time.sleep(4.0)  # the scenario: C waits in the redundancy list longer than its join timeout
        assert not fc.done(), f"C was failed while in the redundancy list: {fc.exception() or fc.result()!r}"
        assert role_of(c.handler) == "redundant"

        a.kill()
        killed_at = time.monotonic()
        deadline = killed_at + DEAD_AFTER + join + SLACK
        fb = pool.submit(agent, b.handler, deadline)
        try:
            c_info = result_by(fc, deadline, "C's next_rendezvous")
        except RendezvousTimeoutError as exc:
            pytest.fail(f"C was failed {time.monotonic() - killed_at:.2f} s after A died, when it left the redundancy list "
                        f"(its join deadline was not reset): RendezvousTimeoutError: {exc}")  # fmt: skip
        c_done = time.monotonic() - killed_at
        _, b_info = result_by(fb, deadline + SLACK, "B's agent loop")
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    print(f"\n[measured] {server.backend}: C (redundant for > 4 s) got its rank {c_done:.2f} s after A was killed")
    assert_one_round([b_info, c_info])


# -- 4. the whole round but one dies ----------------------------------------------------------------


def test_the_whole_round_but_one_dies_the_survivor_reforms_alone_then_the_run_grows_back(server, make_run):
    """min 1, max 4: 3 of 4 die; the survivor re-forms a round of 1 within dead_after +
    last_call + slack. Then 3 new nodes join and, with the survivor, form a round of 4."""
    last_call = 2.0
    run = make_run(1, 4, join_timeout=BOUND, last_call_timeout=last_call)
    dying = run.spawn(3)
    survivor = run.node()
    dying.wait_ready(BOUND)
    first = survivor.handler.next_rendezvous()
    assert_one_round([first, *dying.infos(BOUND)])

    dying.kill()
    killed_at = time.monotonic()
    deadline = killed_at + DEAD_AFTER + last_call + SLACK
    [(seen, alone)] = run_all([partial(agent, survivor.handler, deadline)], timeout=deadline - killed_at)
    print(
        f"\n[measured] {server.backend}: 3 of 4 killed; noticed after {seen - killed_at:.2f} s, round of 1 after {time.monotonic() - killed_at:.2f} s"
    )
    assert (alone.rank, alone.world_size) == (0, 1)
    alone.store.set("alone", b"yes")
    assert alone.store.get("alone") == b"yes"

    newcomers = [run.node() for _ in range(3)]
    deadline = time.monotonic() + last_call + SLACK
    results = run_all(
        [partial(agent, survivor.handler, deadline), *(n.handler.next_rendezvous for n in newcomers)],
        timeout=deadline - time.monotonic() + SLACK,
    )
    grown = [results[0][1], *results[1:]]
    assert_one_round(grown)
    assert len(grown) == 4


# -- 5. a complete round, then the server loses its data --------------------------------------------


def test_data_loss_under_a_complete_round_is_reported_to_every_member_and_the_round_reforms(server, make_run):
    """A complete round of 3; the server restarts empty. Every member's num_nodes_waiting()
    turns > 0 within keep_alive_interval + slack (its rank is stale), and they form a new
    round whose store is not the lost one."""
    run = make_run(3, 3, join_timeout=BOUND, last_call_timeout=0.3)
    nodes = [run.node() for _ in range(3)]
    before = run_all([n.handler.next_rendezvous for n in nodes])
    assert_one_round(before)
    before[0].store.set("lost", b"yes")
    assert [n.handler.num_nodes_waiting() for n in nodes] == [0, 0, 0]

    back = server.lose_data()
    deadline = back + INTERVAL + SLACK
    results = run_all([partial(agent, n.handler, deadline) for n in nodes], timeout=deadline - time.monotonic() + SLACK)
    print(f"\n[measured] {server.backend}: stale rank reported {min(s for s, _ in results) - back:.2f}-{max(s for s, _ in results) - back:.2f} s "
          f"after the server came back empty; new round after {time.monotonic() - back:.2f} s")  # fmt: skip
    infos = [info for _, info in results]
    assert_one_round(infos)
    assert len(infos) == 3
    rank0 = next(i for i in infos if i.rank == 0)
    rank0.store.set("k", b"new round")
    assert {i.store.get("k") for i in infos} == {b"new round"}
    assert not infos[1].store.check(["lost"])
