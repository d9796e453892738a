"""AtomicMembership on etcd v3 (rdzv_etcd.membership.EtcdMembership) against a private etcd.

The sequential scenarios run the same operations on :class:`rdzv_core.rounds.MemoryMembership`
(the reference) and compare every answer; then concurrency (32 clients joining at once; more
clients than ``max_nodes``), the number of requests per join, a dead node's lease, change
notification, and a server that loses its data. Every wait is bounded.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import threading
import time
from typing import Any

import pytest

from rdzv_core.backend import AtomicMembership, Role, RoundSpec, Standing
from rdzv_core.rounds import MemoryMembership
from tests.fixtures_etcd import private_etcd, unique_run_id

pytestmark = pytest.mark.integration

try:  # the shared contract suite, once it exists
    from tests.contracts import MembershipContract  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - depends on the other engineer's progress
    MembershipContract = None


@pytest.fixture(scope="module")
def own_etcd():
    """A private etcd that these tests may wipe."""
    with private_etcd("membership") as server:
        yield server


@pytest.fixture
def make_membership(own_etcd):
    """Factory ``(run_id=None) -> EtcdMembership`` with its own client (adapter)."""
    from rdzv_etcd.client import EtcdConfig
    from rdzv_etcd.membership import EtcdMembership
    from rdzv_etcd.v3 import EtcdV3KV

    made: list[Any] = []

    def make(run_id: str | None = None) -> EtcdMembership:
        kv = EtcdV3KV(EtcdConfig.from_endpoint(own_etcd.endpoint, {"read_timeout": 10}))
        membership = EtcdMembership(kv, run_id or unique_run_id("members"))
        made.append(membership)
        return membership

    yield make
    for membership in made:
        membership.close()


@pytest.fixture
def membership(make_membership):
    return make_membership()


if MembershipContract is not None:

    class TestEtcdMembershipContract(MembershipContract):  # type: ignore[misc, valid-type]
        @pytest.fixture
        def membership(self, make_membership):
            """The contract's factory: a new client of one fresh run per call."""
            run = unique_run_id("contract")
            return lambda: make_membership(run)


# -- comparison with the reference ---------------------------------------------------------


def view(standing: Standing) -> tuple[Any, ...]:
    """What must agree between implementations (the incarnation is random, time is not exact)."""
    return (
        standing.version, standing.round, standing.complete, standing.closed, standing.role, standing.rank,
        standing.world_size, standing.participants, standing.waiting, standing.redundant,
        standing.deadline_in is None, standing.left_redundancy,
    )  # fmt: skip


class Twin:
    """The same operations on the reference and on etcd; every answer compared."""

    def __init__(self, etcd: Any) -> None:
        self.ref = MemoryMembership("twin")
        self.etcd = etcd

    def do(self, op: str, *args: Any) -> Standing:
        expected = getattr(self.ref, op)(*args)
        actual = getattr(self.etcd, op)(*args)
        if op == "keep_alive_round":
            expected, actual = expected[0], actual[0]
        # The reference builds its answer before bumping the version (a spurious wake-up for
        # the caller); etcd, like Redis, answers the version after this very operation.
        record = self.ref.record
        expected = dataclasses.replace(expected, version=0 if record is None else record.version)
        assert view(actual) == view(expected), f"{op}{args}: etcd {actual} != reference {expected}"
        if expected.deadline_in is not None:
            assert abs(actual.deadline_in - expected.deadline_in) < 0.5
        return actual

    def check_state(self) -> None:
        expected, actual = self.ref.membership_state(), self.etcd.membership_state()
        assert (actual is None) == (expected is None)
        if expected is not None:
            for name in ("round", "complete", "closed", "world_size", "participants", "wait_list", "redundancy_list"):
                assert getattr(actual, name) == getattr(expected, name), name


def test_is_an_atomic_membership(membership):
    assert isinstance(membership, AtomicMembership)


def test_no_record_standing_is_empty(membership):
    standing = membership.round_standing("a")
    assert standing.incarnation == "" and standing.role is Role.NONE and standing.version == 0
    assert membership.membership_state() is None
    assert membership.leave_round("a", RoundSpec(1, 2, 1.0, 10.0)).incarnation == ""
    assert membership.keep_alive_round("a", RoundSpec(1, 2, 1.0, 10.0), True) == (standing, [])


def test_full_round_redundancy_missing_wait_list_and_next_round(membership):
    spec = RoundSpec(2, 3, 30.0, 30.0)
    twin = Twin(membership)
    assert twin.do("join_round", "a", spec).participants == 1
    assert twin.do("join_round", "b", spec).deadline_in is not None  # last call started
    twin.do("join_round", "b", spec)  # already placed
    done = twin.do("join_round", "c", spec)
    assert done.complete and done.world_size == 3 and done.rank == 2
    assert [twin.do("round_standing", n).rank for n in "abc"] == [0, 1, 2]
    assert twin.do("join_round", "d", spec).role is Role.REDUNDANT
    twin.do("join_round", "d", spec)  # still full: stays
    twin.check_state()
    assert twin.do("leave_round", "c", spec).missing == 1
    moved = twin.do("join_round", "d", spec)
    assert moved.role is Role.WAITING and moved.left_redundancy
    twin.do("join_round", "e", spec)  # complete with room: wait list
    twin.check_state()
    twin.do("leave_round", "a", spec)
    reopened = twin.do("leave_round", "b", spec)
    assert reopened.round == 1 and not reopened.complete and reopened.waiting == 2
    assert twin.do("join_round", "d", spec).role is Role.PARTICIPANT  # wait-listed: joins the new round
    twin.do("join_round", "a", spec)
    final = twin.do("join_round", "e", spec)
    assert final.complete and final.round == 1 and final.waiting == 0
    assert [twin.do("round_standing", n).rank for n in "ade"] == [0, 1, 2]
    twin.check_state()


def test_last_call_completion_and_wait_list_dropped_at_completion(membership):
    spec = RoundSpec(1, 4, 0.3, 30.0)
    twin = Twin(membership)
    twin.do("join_round", "node-b", spec)
    twin.do("join_round", "node-a", spec)
    assert not twin.do("complete_round", "node-a", spec, 0).complete  # last call still running
    time.sleep(0.4)
    assert not twin.do("complete_round", "node-a", spec, 7).complete  # another round
    done = twin.do("complete_round", "node-a", spec, 0)
    assert done.complete and done.world_size == 2 and done.rank == 0
    twin.do("complete_round", "node-b", spec, 0)  # idempotent
    assert twin.do("join_round", "late", spec).role is Role.WAITING
    twin.do("leave_round", "node-a", spec)
    assert twin.do("leave_round", "node-b", spec).round == 1
    twin.do("join_round", "new", spec)  # round 1: participant; "late" still in the wait list
    assert (
        twin.do(
            "round_standing",
            "late",
        ).role
        is Role.WAITING
    )
    time.sleep(0.4)
    done = twin.do("complete_round", "new", spec, 1)
    assert done.complete and done.waiting == 0
    assert twin.do("round_standing", "late").role is Role.NONE  # dropped at completion
    assert twin.do("join_round", "late", spec).role is Role.WAITING  # and joins it again
    twin.check_state()


def test_close_and_join_after_close(membership):
    spec = RoundSpec(1, 2, 30.0, 30.0)
    twin = Twin(membership)
    twin.do("join_round", "a", spec)
    assert twin.do("close_rendezvous", "a").closed
    twin.do("close_rendezvous", "a")
    assert twin.do("join_round", "b", spec).role is Role.NONE
    twin.do("leave_round", "a", spec)
    twin.check_state()


def test_close_creates_the_record(membership):
    twin = Twin(membership)
    assert twin.do("close_rendezvous", "x").closed


def test_ranks_follow_sorted_node_keys(membership):
    nodes = ["b:2", "a_1", "a:1", "é", "Z", "a"]
    spec = RoundSpec(len(nodes), len(nodes), 30.0, 30.0)
    twin = Twin(membership)
    for node in nodes:
        twin.do("join_round", node, spec)
    ranks = {node: membership.round_standing(node).rank for node in nodes}
    assert ranks == {node: rank for rank, node in enumerate(sorted(nodes))}


# -- liveness -------------------------------------------------------------------------------


def test_a_dead_nodes_lease_lapses_and_the_sweep_reports_missing(make_membership):
    run = unique_run_id("dead")
    alive, doomed = make_membership(run), make_membership(run)
    spec = RoundSpec(2, 2, 30.0, 0.5)
    alive.join_round("a", spec)
    assert doomed.join_round("b", spec).complete
    seen = alive.round_standing("a").change_id
    deadline = time.monotonic() + 10
    standing, removed = alive.keep_alive_round("a", spec, True)
    while standing.missing == 0 and time.monotonic() < deadline:
        time.sleep(0.1)
        standing, removed = alive.keep_alive_round("a", spec, True)
    assert standing.missing == 1 and standing.participants == 1 and standing.rank == 0
    assert removed == ["b"]
    assert alive.wait_for_round_change(seen, 0) is True
    assert alive.round_standing("b").role is Role.NONE
    # the last one leaves: the next round opens, and "b" (alive again) joins it
    assert alive.leave_round("a", spec).round == 1
    assert doomed.join_round("b", spec).role is Role.PARTICIPANT


def test_keep_alive_keeps_a_node(make_membership):
    membership = make_membership()
    spec = RoundSpec(1, 2, 30.0, 1.0)
    membership.join_round("a", spec)
    for _ in range(12):  # 3 s, past the lease's 2 s
        time.sleep(0.25)
        assert membership.keep_alive_round("a", spec, True)[0].role is Role.PARTICIPANT


# -- notification ---------------------------------------------------------------------------


def test_wait_for_round_change(make_membership):
    run = unique_run_id("wait")
    waiter, other = make_membership(run), make_membership(run)
    spec = RoundSpec(2, 2, 30.0, 30.0)
    assert waiter.wait_for_round_change(None, 0) is False
    seen = waiter.join_round("a", spec).change_id
    start = time.monotonic()
    assert waiter.wait_for_round_change(seen, 0.3) is False
    assert 0.25 <= time.monotonic() - start < 3
    result: dict[str, Any] = {}

    def wait() -> None:
        started = time.monotonic()
        result["changed"] = waiter.wait_for_round_change(seen, 10)
        result["after"] = time.monotonic() - started

    thread = threading.Thread(target=wait)
    thread.start()
    time.sleep(0.2)
    other.join_round("b", spec)  # completes
    thread.join(10)
    assert result == {"changed": True, "after": result["after"]} and result["after"] < 3


def test_joins_that_change_no_summary_do_not_bump_the_version(membership):
    spec = RoundSpec(1, 100, 30.0, 30.0)
    versions = {membership.join_round(f"n{i:02d}", spec).version for i in range(20)}
    assert versions == {2}  # created (1), last call started (2); the other joins announce nothing


# -- concurrency ----------------------------------------------------------------------------


def run_joins(make_membership, count: int, spec: RoundSpec) -> tuple[list[Standing], list[Any]]:
    run = unique_run_id("burst")
    clients = [make_membership(run) for _ in range(count)]
    for client in clients:  # connect first, so that the joins start together
        client.round_standing("warm-up")
        client.requests = 0
    barrier = threading.Barrier(count)
    results: list[Any] = [None] * count

    def join(index: int) -> None:
        barrier.wait(10)
        try:
            results[index] = clients[index].join_round(f"node-{index:03d}", spec)
        except Exception as exc:  # reported below
            results[index] = exc

    threads = [threading.Thread(target=join, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(thread.is_alive() for thread in threads)
    errors = [r for r in results if isinstance(r, Exception)]
    assert not errors, errors[:3]
    # the final standings (a join answers as soon as its own node is placed)
    return [client.round_standing(f"node-{i:03d}") for i, client in enumerate(clients)], clients


def test_32_clients_join_at_once_into_one_round(make_membership):
    spec = RoundSpec(32, 32, 30.0, 30.0)
    standings, clients = run_joins(make_membership, 32, spec)
    assert {(s.incarnation, s.round, s.complete, s.world_size) for s in standings} == {
        (standings[0].incarnation, 0, True, 32)
    }
    assert sorted(s.rank for s in standings) == list(range(32))
    assert [s.rank for s in standings] == list(range(32))  # node-000 .. node-031: sorted order
    requests = [client.requests - 1 for client in clients]  # minus the final round_standing
    print(f"\n[measured] requests per join (32 at once): max {max(requests)}, mean {sum(requests) / len(requests):.1f}")
    assert max(requests) <= 12 and sum(requests) / len(requests) <= 8


@pytest.mark.parametrize(("clients", "min_nodes", "max_nodes"), [(20, 4, 8), (40, 32, 32), (24, 1, 3)])
def test_more_clients_than_max_nodes(make_membership, clients, min_nodes, max_nodes):
    spec = RoundSpec(min_nodes, max_nodes, 30.0, 30.0)
    standings, _ = run_joins(make_membership, clients, spec)
    members = [(i, s) for i, s in enumerate(standings) if s.role is Role.PARTICIPANT]
    assert len(members) == max_nodes and all(s.complete and s.world_size == max_nodes for s in standings)
    assert [s.rank for _, s in members] == list(range(max_nodes))  # in node-key order
    others = [s for s in standings if s.role is not Role.PARTICIPANT]
    assert {s.role for s in others} == {Role.REDUNDANT} and len(others) == clients - max_nodes
    assert standings[0].redundant == clients - max_nodes and standings[0].participants == max_nodes


def test_join_request_count_is_independent_of_n(make_membership):
    spec = RoundSpec(1, 1000, 30.0, 30.0)
    run = unique_run_id("count")
    first = make_membership(run)
    first.join_round("warm", spec)
    costs = []
    for n in (1, 50):
        client = make_membership(run)
        for i in range(n):
            client.join_round(f"n{n}-{i:03d}", spec)
        client.requests = 0
        client.join_round(f"probe-{n}", spec)
        costs.append(client.requests)
    assert costs[0] == costs[1] <= 4, costs


# -- data loss ------------------------------------------------------------------------------


def test_server_data_loss_gives_an_empty_standing_then_a_new_incarnation(own_etcd, make_membership):
    spec = RoundSpec(1, 2, 30.0, 30.0)
    membership = make_membership()
    before = membership.join_round("a", spec)
    assert before.role is Role.PARTICIPANT
    result: dict[str, Any] = {}

    def wait() -> None:
        result["changed"] = membership.wait_for_round_change(before.change_id, 30)

    waiter = threading.Thread(target=wait)
    waiter.start()
    time.sleep(0.3)
    own_etcd.kill()
    shutil.rmtree(own_etcd.data_dir)
    own_etcd.restart()
    waiter.join(30)
    assert result == {"changed": True}
    lost = membership.round_standing("a")
    assert lost.incarnation == "" and lost.role is Role.NONE
    assert membership.keep_alive_round("a", spec, True)[0].incarnation == ""
    after = membership.join_round("a", spec)
    assert after.incarnation not in ("", before.incarnation) and after.role is Role.PARTICIPANT and after.version >= 1


# -- random sequences against the reference -----------------------------------------------


@pytest.mark.parametrize("seed", range(int(os.environ.get("RDZV_SEEDS", "6"))))
def test_random_sequences_match_the_reference(membership, seed):
    """Random joins, leaves, completions (last call 0: due at once), sweeps and a rare close,
    one at a time: every answer and the final record equal the reference's."""
    import random

    rng = random.Random(seed)
    spec = RoundSpec(rng.randint(1, 3), rng.randint(3, 5), 0.0, 60.0)
    twin = Twin(membership)
    nodes = [f"n{i}" for i in range(8)]
    for _ in range(int(os.environ.get("RDZV_STEPS", "70"))):
        node = rng.choice(nodes)
        pick = rng.random()
        if pick < 0.45:
            twin.do("join_round", node, spec)
        elif pick < 0.65:
            twin.do("leave_round", node, spec)
        elif pick < 0.85:
            twin.do("complete_round", node, spec, twin.ref.record.round if twin.ref.record else 0)
        elif pick < 0.98:
            twin.do("keep_alive_round", node, spec, rng.random() < 0.5)
        else:
            twin.do("close_rendezvous", node)
        twin.do("round_standing", rng.choice(nodes))
    twin.check_state()


# -- churn: many clients at once, then the invariants ---------------------------------------


def test_concurrent_churn_ends_consistent(make_membership):
    import random

    run = unique_run_id("churn")
    spec = RoundSpec(3, 6, 0.0, 60.0)
    clients = [make_membership(run) for _ in range(10)]
    errors: list[BaseException] = []

    def work(index: int) -> None:
        rng = random.Random(index)
        client, node = clients[index], f"node-{index:02d}"
        try:
            for _ in range(25):
                pick = rng.random()
                if pick < 0.55:
                    client.join_round(node, spec)
                elif pick < 0.75:
                    client.leave_round(node, spec)
                elif pick < 0.9:
                    client.complete_round(node, spec, client.round_standing(node).round)
                else:
                    client.keep_alive_round(node, spec, True)
            client.join_round(node, spec)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(clients))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors[:3]
    # quiet now: one sweep reconciles whatever a race left, then everyone agrees
    clients[0].keep_alive_round("node-00", spec, True)
    for index, client in enumerate(clients):  # a wait-listed node of a re-opened round moves on
        client.join_round(f"node-{index:02d}", spec)
    clients[0].complete_round("node-00", spec, clients[0].round_standing("node-00").round)
    clients[0].keep_alive_round("node-00", spec, True)
    state = clients[0].membership_state()
    standings = [client.round_standing(f"node-{i:02d}") for i, client in enumerate(clients)]
    members = [s for s in standings if s.role is Role.PARTICIPANT]
    assert state.complete and spec.min_nodes <= state.world_size <= spec.max_nodes
    assert len(members) == len(state.participants) <= state.world_size
    assert sorted(s.rank for s in members) == sorted(state.participants.values())
    assert len(set(state.participants.values())) == len(state.participants)
    assert all(0 <= s.rank < state.world_size for s in members)
    assert len({s.change_id for s in standings}) == 1
    assert standings[0].missing == state.world_size - len(state.participants)
    assert standings[0].waiting == len(state.wait_list) and standings[0].redundant == len(state.redundancy_list)


# -- through the handler --------------------------------------------------------------------


@pytest.mark.parametrize(("nodes", "min_nodes", "max_nodes"), [(4, 4, 4), (5, 2, 3)])
def test_handlers_rendezvous_over_the_membership_backend(own_etcd, nodes, min_nodes, max_nodes):
    """Real handlers (rdzv_core.dynamic) on EtcdMembershipBackend: they take the membership
    path and agree on one round; the redundant ones are left out."""
    from rdzv_core.api import RendezvousParameters
    from rdzv_core.dynamic import create_handler
    from rdzv_etcd.membership import EtcdMembershipBackend, create_membership_backend

    run = unique_run_id("handlers")
    params = RendezvousParameters(
        "etcd-v3", own_etcd.endpoint, run, min_nodes, max_nodes,
        read_timeout=10, join_timeout=30, last_call_timeout=1, keep_alive_interval=1, close_timeout=10,
    )  # fmt: skip
    made = [create_membership_backend(params) for _ in range(nodes)]
    assert all(
        isinstance(backend, EtcdMembershipBackend) and isinstance(backend, AtomicMembership) for backend, _ in made
    )
    handlers = [create_handler(store, backend, params) for backend, store in made]
    results: list[Any] = [None] * nodes

    def run_one(index: int) -> None:
        try:
            info = handlers[index].next_rendezvous()
            results[index] = (info.rank, info.world_size)
        except Exception as exc:  # noqa: BLE001 - the redundant ones time out / are reported
            results[index] = exc

    threads = [threading.Thread(target=run_one, args=(i,), daemon=True) for i in range(nodes)]
    for thread in threads:
        thread.start()
    try:
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline and sum(isinstance(r, tuple) for r in results) < max_nodes:
            time.sleep(0.05)
        joined = [r for r in results if isinstance(r, tuple)]
        assert sorted(rank for rank, _ in joined) == list(range(max_nodes)), results
        assert {size for _, size in joined} == {max_nodes}
        assert all(backend.membership.requests > 0 for backend, _ in made)
    finally:
        for handler in handlers:
            try:
                handler.shutdown()
            except Exception:  # noqa: BLE001 - best effort
                pass
        for thread in threads:
            thread.join(40)
        for backend, _ in made:
            backend.close()
