"""Reusable contract suites: every Store and RendezvousBackend in the repo runs them.

Use by subclassing in a test module and providing a fixture::

    class TestRedisStore(StoreContract):
        @pytest.fixture
        def store(self, redis_server):      # a fresh, empty store per test
            ...
        @pytest.fixture
        def other_store(self, store):       # a second client on the same data (optional)
            ...

    class TestRedisBackend(BackendContract):
        @pytest.fixture
        def backend(self): ...              # a fresh backend of a fresh run id
        @pytest.fixture
        def other_backend(self, backend): ...   # a second client on the same run
        @pytest.fixture
        def corrupt_state(self, backend):   # callable writing raw bytes into the state key
            ...
"""

from __future__ import annotations

import random
import threading
import time
from datetime import timedelta

import pytest

from rdzv_core import rounds
from rdzv_core.api import RendezvousStateError
from rdzv_core.backend import (
    MAX_BOOTSTRAP_CHARS,
    BootstrapRecord,
    ChangeNotifier,
    JoinQueue,
    LivenessTracker,
    Role,
    RoundSpec,
)
from rdzv_core.store import PrefixStore, StoreTimeoutError


class StoreContract:
    """c10d store semantics. Needs fixtures ``store`` and ``other_store``."""

    @pytest.fixture
    def other_store(self, store):
        return store

    def test_set_get_roundtrip_bytes_and_str(self, store):
        store.set("a", b"\x00\x01bin")
        store.set("b", "ünïcode")
        assert store.get("a") == b"\x00\x01bin"
        assert store.get("b") == "ünïcode".encode()

    def test_set_overwrites(self, store):
        store.set("k", b"1")
        store.set("k", b"2")
        assert store.get("k") == b"2"

    def test_empty_value(self, store):
        store.set("empty", b"")
        assert store.get("empty") == b""
        assert store.check(["empty"])

    def test_get_missing_times_out(self, store):
        store.set_timeout(timedelta(seconds=0.2))
        start = time.monotonic()
        with pytest.raises(StoreTimeoutError):
            store.get("missing")
        assert 0.15 <= time.monotonic() - start < 5

    def test_get_blocks_until_other_client_sets(self, store, other_store):
        store.set_timeout(10)
        result = {}

        def reader():
            result["value"] = store.get("later")
            result["at"] = time.monotonic()

        thread = threading.Thread(target=reader)
        thread.start()
        time.sleep(0.05)  # let the reader block first; the assertion below does not depend on it
        set_at = time.monotonic()
        other_store.set("later", b"v")
        thread.join(10)
        assert not thread.is_alive()
        assert result["value"] == b"v"
        assert result["at"] - set_at < 1.0

    def test_add_is_a_counter(self, store):
        assert store.add("c", 1) == 1
        assert store.add("c", 5) == 6
        assert store.add("c", -2) == 4
        assert store.get("c") == b"4"

    def test_add_concurrent_is_atomic(self, store, other_store):
        def bump(s):
            for _ in range(50):
                s.add("n", 1)

        threads = [threading.Thread(target=bump, args=(s,)) for s in (store, other_store, store, other_store)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert store.add("n", 0) == 200

    def test_add_on_non_integer_raises(self, store):
        store.set("text", b"abc")
        with pytest.raises(ValueError, match="text"):
            store.add("text", 1)

    def test_compare_set_semantics(self, store):
        # absent + empty expected -> set
        assert store.compare_set("cs", b"", b"v1") == b"v1"
        assert store.get("cs") == b"v1"
        # matching expected -> set, returns desired
        assert store.compare_set("cs", b"v1", b"v2") == b"v2"
        # mismatch -> current value returned, nothing set
        assert store.compare_set("cs", b"wrong", b"v3") == b"v2"
        assert store.get("cs") == b"v2"
        # absent + non-empty expected -> expected returned, nothing set
        assert store.compare_set("absent", b"x", b"y") == b"x"
        assert not store.check(["absent"])

    def test_wait_and_check(self, store, other_store):
        assert not store.check(["w1", "w2"])
        other_store.set("w1", b"1")
        with pytest.raises(StoreTimeoutError):
            store.wait(["w1", "w2"], timedelta(seconds=0.2))
        other_store.set("w2", b"2")
        store.wait(["w1", "w2"], 5)
        assert store.check(["w1", "w2"])

    def test_wait_accepts_float_seconds(self, store):
        with pytest.raises(StoreTimeoutError):
            store.wait(["nope"], 0.1)

    def test_delete_key_and_num_keys(self, store):
        base = store.num_keys()
        store.set("d1", b"1")
        store.set("d2", b"2")
        assert store.num_keys() == base + 2
        assert store.delete_key("d1") is True
        assert store.delete_key("d1") is False
        assert store.num_keys() == base + 1
        assert not store.check(["d1"])

    def test_multi_get_multi_set(self, store):
        store.multi_set(["m1", "m2", "m3"], [b"a", "b", b""])
        assert store.multi_get(["m3", "m1", "m2"]) == [b"", b"a", b"b"]
        with pytest.raises(ValueError):
            store.multi_set(["x"], [b"1", b"2"])

    def test_multi_get_blocks_for_missing(self, store):
        store.set("present", b"1")
        store.set_timeout(0.2)
        with pytest.raises(StoreTimeoutError):
            store.multi_get(["present", "absent"])

    def test_multi_get_timeout_argument(self, store):
        store.set("mt1", b"1")
        store.set_timeout(30)
        started = time.monotonic()
        with pytest.raises(StoreTimeoutError):
            store.multi_get(["mt1", "mt-absent"], timeout=0.2)
        assert time.monotonic() - started < 20  # the argument, not the store's 30 s, bounded it
        assert store.multi_get(["mt1"], timeout=timedelta(seconds=0.2)) == [b"1"]

        def later() -> None:
            store.set("mt2", b"2")

        timer = threading.Timer(0.1, later)
        timer.start()
        try:
            assert store.multi_get(["mt2", "mt1"], timeout=10) == [b"2", b"1"]
        finally:
            timer.join()

    def test_append(self, store):
        store.append("ap", b"ab")
        store.append("ap", "cd")
        assert store.get("ap") == b"abcd"

    def test_timeout_property(self, store):
        store.set_timeout(timedelta(seconds=12))
        assert store.timeout == timedelta(seconds=12)
        store.set_timeout(3.5)
        assert store.timeout == timedelta(seconds=3.5)

    def test_bad_values_and_keys(self, store):
        with pytest.raises(TypeError):
            store.set("k", 123)
        with pytest.raises(ValueError):
            store.set("", b"v")

    def test_large_value(self, store):
        blob = bytes(range(256)) * 4096 * 4  # 4 MiB
        store.set("big", blob)
        assert store.get("big") == blob

    def test_keys_with_separators(self, store):
        store.set("a/b:c.d{e}", b"1")
        assert store.get("a/b:c.d{e}") == b"1"

    def test_prefix_store_isolates(self, store):
        left, right = PrefixStore("left", store), PrefixStore("right", store)
        left.set("k", b"L")
        right.set("k", b"R")
        assert left.get("k") == b"L"
        assert right.get("k") == b"R"
        assert store.get("left/k") == b"L"
        assert left.add("n", 2) == 2
        assert left.compare_set("k", b"L", b"L2") == b"L2"
        assert not right.check(["n"])


class BackendContract:
    """torch's RendezvousBackend contract. Needs ``backend``, ``other_backend``, ``corrupt_state``."""

    def test_absent_state_is_none(self, backend):
        assert backend.get_state() is None

    def test_create_only_if_absent(self, backend, other_backend):
        state, token, has_set = backend.set_state(b"first")
        assert has_set and state == b"first"
        state2, token2, has_set2 = other_backend.set_state(b"second", None)
        assert not has_set2
        assert state2 == b"first" and token2 == token

    def test_current_token_sets_and_changes_token(self, backend, other_backend):
        _, token, _ = backend.set_state(b"v1")
        state, token2, has_set = other_backend.set_state(b"v2", token)
        assert has_set and state == b"v2" and token2 != token
        assert backend.get_state() == (b"v2", token2)

    def test_stale_token_does_not_set(self, backend, other_backend):
        _, token1, _ = backend.set_state(b"v1")
        _, token2, _ = backend.set_state(b"v2", token1)
        state, token, has_set = other_backend.set_state(b"v3", token1)
        assert not has_set
        assert (state, token) == (b"v2", token2)

    def test_same_bytes_written_twice_changes_token(self, backend):
        _, token1, _ = backend.set_state(b"same")
        state, token2, has_set = backend.set_state(b"same", token1)
        assert has_set and token2 != token1
        _, token3, has_set3 = backend.set_state(b"other", token1)
        assert not has_set3 and token3 == token2

    def test_foreign_token_does_not_set(self, backend):
        backend.set_state(b"v1")
        state, _, has_set = backend.set_state(b"v2", "not-a-token-of-this-backend")
        assert not has_set and state == b"v1"

    def test_corrupt_state_raises_state_error(self, backend, corrupt_state):
        corrupt_state(b"\xff\xfe garbage \x00")
        with pytest.raises(RendezvousStateError):
            backend.get_state()

    def test_large_state(self, backend):
        blob = b"x" * (1 << 20)
        _, token, has_set = backend.set_state(blob)
        assert has_set
        assert backend.get_state() == (blob, token)

    def test_change_notification_wakes_waiter(self, backend, other_backend):
        if not isinstance(backend, ChangeNotifier):
            pytest.skip("backend has no change notification")
        _, token, _ = backend.set_state(b"v1")
        assert backend.wait_for_change(token, 0) is False
        woke = {}

        def waiter():
            start = time.monotonic()
            woke["changed"] = backend.wait_for_change(token, 10)
            woke["after"] = time.monotonic() - start

        thread = threading.Thread(target=waiter)
        thread.start()
        time.sleep(0.1)
        other_backend.set_state(b"v2", token)
        thread.join(10)
        assert woke["changed"] is True
        assert woke["after"] < 2.0
        assert backend.wait_for_change(None, 0) is True  # a state exists now

    def test_change_notification_times_out(self, backend):
        if not isinstance(backend, ChangeNotifier):
            pytest.skip("backend has no change notification")
        _, token, _ = backend.set_state(b"v1")
        start = time.monotonic()
        assert backend.wait_for_change(token, 0.3) is False
        assert 0.2 <= time.monotonic() - start < 3

    def test_liveness_records(self, backend):
        if not isinstance(backend, LivenessTracker):
            pytest.skip("backend has no liveness tracker")
        backend.keep_alive("node-a", 30)
        ages = backend.heartbeat_ages(["node-a", "node-b"])
        assert ages[1] is None
        assert ages[0] is not None and 0 <= ages[0] < 5
        backend.forget_node("node-a")
        assert backend.heartbeat_ages(["node-a"]) == [None]

    def test_join_queue(self, backend, other_backend):
        if not isinstance(backend, JoinQueue):
            pytest.skip("backend has no join queue")
        assert backend.pending_joins() == [] and backend.pending_join_count() == 0
        assert backend.enqueue_join("node-a") == 1
        assert other_backend.enqueue_join("node-b") == 2
        assert backend.enqueue_join("node-a") == 1  # a queued node keeps its place
        assert other_backend.pending_joins() == ["node-a", "node-b"]
        assert backend.pending_join_count() == 2
        backend.ack_joins(["node-a"])
        backend.ack_joins(["node-a"])  # idempotent
        assert backend.pending_joins() == ["node-b"]
        assert backend.enqueue_join("node-c") == 2


class MembershipContract:
    """The semantics of :mod:`rdzv_core.rounds` for an :class:`AtomicMembership`.

    Needs a fixture ``membership``: a factory ``make()`` returning a new client (its own
    backend object) of one fresh run per test; every call of ``make`` in a test gives a client
    of the same run.
    """

    SPEC = RoundSpec(min_nodes=2, max_nodes=3, last_call=0.2, dead_after=0.3)

    def _wait(self, predicate, what, bound=10.0):
        deadline = time.monotonic() + bound
        while not predicate():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.01)

    def test_absent_record_is_the_empty_standing(self, membership):
        m = membership()
        for standing in (
            m.round_standing("a"),
            m.leave_round("a", self.SPEC),
            m.complete_round("a", self.SPEC, 0),
            m.keep_alive_round("a", self.SPEC, True)[0],
        ):
            assert (standing.incarnation, standing.role, standing.round, standing.complete) == ("", Role.NONE, 0, False)
        assert m.membership_state() is None

    def test_max_nodes_completes_with_ranks_in_key_order(self, membership):
        m = membership()
        first = m.join_round("c", self.SPEC)
        assert first.role is Role.PARTICIPANT and not first.complete and first.deadline_in is None and first.incarnation
        assert m.join_round("a", self.SPEC).deadline_in is not None  # min reached: the last call runs
        last = m.join_round("b", self.SPEC)
        assert last.complete and last.world_size == 3 and last.rank == 1 and last.deadline_in is None
        assert [m.round_standing(n).rank for n in "abc"] == [0, 1, 2]
        assert m.join_round("a", self.SPEC).rank == 0  # idempotent

    def test_last_call_completes_via_complete_round(self, membership):
        m = membership()
        m.join_round("a", self.SPEC)
        standing = m.join_round("b", self.SPEC)
        assert 0 < standing.deadline_in <= self.SPEC.last_call + 1e-3
        early = m.complete_round("a", self.SPEC, standing.round)
        assert early.complete is False and early.deadline_in is not None  # too early (unless slow)
        assert m.complete_round("a", self.SPEC, standing.round + 1).complete is False  # wrong round: no-op
        attempts: list[object] = []

        def completed():
            attempts.append(m.complete_round("b", self.SPEC, standing.round))
            return attempts[-1].complete  # type: ignore[attr-defined]

        self._wait(completed, "the last call to end", bound=5.0)
        done = attempts[-1]
        assert done.world_size == 2 and done.rank == 1 and done.deadline_in is None and done.version > standing.version
        assert m.complete_round("a", self.SPEC, standing.round).rank == 0  # idempotent

    def test_joins_during_the_last_call_and_repeated_joins_do_not_bump(self, membership):
        m = membership()
        spec = RoundSpec(min_nodes=2, max_nodes=5, last_call=30.0, dead_after=30.0)
        m.join_round("a", spec)
        started = m.join_round("b", spec)  # the last call starts
        assert [m.join_round(n, spec).version for n in "cd"] == [started.version] * 2
        assert m.join_round("a", spec).version == started.version  # already placed
        assert m.join_round("e", spec).version > started.version  # max: complete

    def test_a_participant_leaving_below_min_stops_the_last_call(self, membership):
        m = membership()
        m.join_round("a", self.SPEC)
        running = m.join_round("b", self.SPEC)
        stopped = m.leave_round("b", self.SPEC)
        assert running.deadline_in is not None and stopped.deadline_in is None
        assert stopped.version > running.version and stopped.role is Role.NONE and stopped.participants == 1

    def test_a_redundant_node_stays_while_the_round_is_full(self, membership):
        m, spec = membership(), RoundSpec(min_nodes=1, max_nodes=2, last_call=5.0, dead_after=5.0)
        m.join_round("a", spec)
        m.join_round("b", spec)
        first = m.join_round("r", spec)
        again = m.join_round("r", spec)
        assert first.role is again.role is Role.REDUNDANT and not again.left_redundancy
        assert again.version == first.version and again.redundant == 1
        assert m.join_round("s", spec).redundant == 2
        assert m.leave_round("r", spec).redundant == 1

    def test_joins_below_min_do_not_bump_the_version(self, membership):
        m = membership()
        spec = RoundSpec(min_nodes=5, max_nodes=8, last_call=1.0, dead_after=5.0)
        versions = {m.join_round(n, spec).version for n in "abcd"}
        assert len(versions) == 1
        assert m.join_round("e", spec).version > versions.pop()  # the last call starts

    def test_wait_list_redundancy_and_reopening(self, membership):
        m, spec = membership(), RoundSpec(min_nodes=1, max_nodes=2, last_call=5.0, dead_after=5.0)
        m.join_round("a", spec)
        assert m.join_round("b", spec).complete
        assert m.join_round("r", spec).role is Role.REDUNDANT  # full
        m.leave_round("a", spec)
        assert m.round_standing("b").missing == 1
        moved = m.join_round("r", spec)  # room appeared
        assert moved.role is Role.WAITING and moved.left_redundancy
        assert m.round_standing("b").waiting == 1
        reopened = m.leave_round("b", spec)
        assert not reopened.complete and reopened.round == 1 and reopened.participants == 0
        assert m.join_round("r", spec).role is Role.PARTICIPANT  # the wait-listed node joins the new round

    def test_completion_drops_the_stale_wait_list(self, membership):
        m, spec = membership(), RoundSpec(min_nodes=1, max_nodes=2, last_call=5.0, dead_after=5.0)
        m.join_round("a", spec)
        m.join_round("b", spec)
        m.leave_round("a", spec)
        m.join_round("w", spec)  # waits for the next round
        m.leave_round("b", spec)  # the round re-opens; w does not come
        m.join_round("a", spec)
        assert m.join_round("b", spec).complete
        assert m.round_standing("w").role is Role.NONE and m.round_standing("a").waiting == 0

    def test_sweep_removes_lapsed_nodes_but_never_the_caller_or_the_live(self, membership):
        m, spec = membership(), RoundSpec(min_nodes=3, max_nodes=3, last_call=5.0, dead_after=0.3)
        for n in "abc":
            m.join_round(n, spec)
        removed: list[str] = []

        def lapse_of_c():
            m.keep_alive_round("b", spec, False)
            standing, gone = m.keep_alive_round("a", spec, True)
            removed.extend(gone)
            return bool(removed)

        self._wait(lapse_of_c, "c to be swept")
        assert removed == ["c"]
        standing = m.round_standing("a")
        assert standing.complete and standing.missing == 1 and m.round_standing("c").role is Role.NONE
        assert m.keep_alive_round("a", spec, True)[1] == []

    def test_sweep_never_removes_the_caller_even_when_its_own_record_lapsed(self, membership):
        # last_call > dead_after: once the last call ended, every record written at the joins lapsed.
        m, spec = membership(), RoundSpec(min_nodes=2, max_nodes=3, last_call=0.4, dead_after=0.3)
        m.join_round("a", spec)
        m.join_round("b", spec)
        m.keep_alive_round("x", spec, False)  # lapses too, but is in no list: not reported
        self._wait(lambda: m.round_standing("a").deadline_in == 0, "the last call to end", bound=5.0)
        standing, removed = m.keep_alive_round("a", spec, True)
        assert removed == ["b"]
        assert standing.role is Role.PARTICIPANT and standing.participants == 1 and standing.deadline_in is None
        assert m.keep_alive_round("a", spec, True)[1] == []

    @pytest.mark.parametrize(
        "seed, spec",
        [(0, RoundSpec(2, 4, 0.0, 60.0)), (1, RoundSpec(1, 2, 0.0, 60.0)), (2, RoundSpec(3, 3, 60.0, 60.0))],
    )
    def test_matches_the_reference_model(self, membership, seed, spec):
        """Seeded random operations against :mod:`rdzv_core.rounds` applied to a local record:
        the same standings (but the incarnation and the exact deadline) and the same state."""
        nodes = ["a", "B", "c10", "c9", "\u00fc", "\u65e5\u672c", "z"]
        m, rng, rec = membership(), random.Random(seed), None
        publishes = isinstance(m, BootstrapRecord)
        for step in range(150):
            node, op = (
                rng.choice(nodes),
                rng.choice(
                    ["join"] * 4
                    + ["leave"] * 2
                    + ["complete", "keep_alive", "standing"]
                    + (["bootstrap"] * 2 if publishes else [])
                ),
            )
            if step == 110:
                op = "close"
            now = time.time()
            if op == "join":
                got, rec = m.join_round(node, spec), rec or rounds.RoundRecord()
                want = rounds.join(rec, node, spec, now)[0]
            elif op == "close":
                got, rec = m.close_rendezvous(node), rec or rounds.RoundRecord()
                want = rounds.close(rec, node, now)[0]
            elif op == "standing":
                got, want = m.round_standing(node), rounds.standing(rec, node, now)
            elif rec is None:
                got = (
                    m.leave_round(node, spec) if op == "leave" else m.complete_round(node, spec, 0) if op == "complete"
                    else m.publish_bootstrap(node, 0, f"b{step}") if op == "bootstrap" else m.keep_alive_round(node, spec, False)[0]
                )  # fmt: skip
                want = rounds.standing(None, node, now)
            elif op == "leave":
                got, want = m.leave_round(node, spec), rounds.leave(rec, node, spec, now)[0]
            elif op == "complete":
                round_ = rec.round - rng.choice([0, 0, 1])
                got, want = m.complete_round(node, spec, round_), rounds.complete(rec, node, spec, round_, now)[0]
            elif op == "bootstrap":
                round_ = rec.round - rng.choice([0, 0, 1])
                got, want = (
                    m.publish_bootstrap(node, round_, f"b{step}"),
                    rounds.publish_bootstrap(rec, node, round_, f"b{step}", now)[0],
                )
            else:
                got, want = m.keep_alive_round(node, spec, False)[0], rounds.keep_alive(rec, node, spec, False, now)[0]
            assert _comparable(got) == _comparable(want), f"seed {seed}, step {step}: {op}({node!r})"
        state, expected = m.membership_state(), rounds.to_state(rec, "run")
        assert (
            state.round,
            state.complete,
            state.closed,
            state.world_size,
            state.participants,
            state.wait_list,
            state.redundancy_list,
        ) == (
            expected.round,
            expected.complete,
            expected.closed,
            expected.world_size,
            expected.participants,
            expected.wait_list,
            expected.redundancy_list,
        )

    def _publisher(self, membership):
        m = membership()
        if not isinstance(m, BootstrapRecord):
            pytest.skip("backend has no bootstrap record")
        return m

    def test_bootstrap_only_from_rank_0_of_the_complete_round_and_only_once(self, membership):
        m, spec = self._publisher(membership), RoundSpec(min_nodes=2, max_nodes=2, last_call=5.0, dead_after=5.0)
        m.join_round("b", spec)
        assert m.publish_bootstrap("b", 0, "early").bootstrap is None  # open round: refused
        done = m.join_round("a", spec)
        assert done.complete and done.bootstrap is None
        assert m.publish_bootstrap("b", 0, "rank 1").bootstrap is None  # not rank 0
        assert m.publish_bootstrap("a", 1, "wrong round").bootstrap is None
        published = m.publish_bootstrap("a", 0, '{"addr":"h","port":1}')
        assert published.bootstrap == '{"addr":"h","port":1}' and published.version > done.version  # announced
        again = m.publish_bootstrap("a", 0, "second")
        assert again.bootstrap == '{"addr":"h","port":1}' and again.version == published.version  # the first stands
        assert m.round_standing("b").bootstrap == '{"addr":"h","port":1}'
        assert m.keep_alive_round("b", spec, False)[0].bootstrap == '{"addr":"h","port":1}'
        assert m.round_standing("x").bootstrap == '{"addr":"h","port":1}'  # a round's fact, whoever asks
        m.leave_round("a", spec)
        reopened = m.leave_round("b", spec)
        assert reopened.round == 1 and not reopened.complete and reopened.bootstrap is None
        m.join_round("a", spec)
        assert m.join_round("b", spec).bootstrap is None  # the next round starts without one

    @pytest.mark.parametrize("value", ["", "x" * (MAX_BOOTSTRAP_CHARS + 1)], ids=["empty", "too-long"])
    def test_bootstrap_rejects_bad_values(self, membership, value):
        m = self._publisher(membership)
        with pytest.raises(ValueError, match="bootstrap value"):
            m.publish_bootstrap("a", 0, value)

    def test_bootstrap_without_a_record_creates_none(self, membership):
        m = self._publisher(membership)
        assert m.publish_bootstrap("a", 0, "v").incarnation == "" and m.membership_state() is None

    def test_close_and_membership_state(self, membership):
        m = membership()
        m.join_round("a", self.SPEC)
        state = m.membership_state()
        assert list(state.participants) == ["a"] and not state.closed
        assert m.close_rendezvous("x").closed
        assert m.join_round("b", self.SPEC).closed and m.round_standing("b").role is Role.NONE
        assert m.membership_state().closed

    def test_wait_for_round_change(self, membership):
        m, other = membership(), membership()
        seen = m.join_round("a", self.SPEC).change_id
        assert m.wait_for_round_change(seen, 0) is False
        assert m.wait_for_round_change(seen, 0.2) is False
        timer = threading.Timer(0.2, lambda: other.join_round("b", self.SPEC))  # min reached: announced
        timer.start()
        try:
            started = time.monotonic()
            assert m.wait_for_round_change(seen, 10) is True
            assert time.monotonic() - started < 5
        finally:
            timer.join()
        assert m.wait_for_round_change(seen, 0) is True
        assert m.wait_for_round_change(m.round_standing("a").change_id, 0) is False

    def test_wait_for_round_change_from_no_record(self, membership):
        m, other = membership(), membership()
        assert m.wait_for_round_change(None, 0) is False
        assert m.wait_for_round_change(("", 0), 0.1) is False
        timer = threading.Timer(0.1, lambda: other.join_round("a", self.SPEC))  # creates the record
        timer.start()
        try:
            assert m.wait_for_round_change(None, 10) is True
        finally:
            timer.join()
        assert m.wait_for_round_change(m.round_standing("a").change_id, 0) is False


def _comparable(standing):
    """A standing without what differs between two correct implementations: the random
    incarnation (only whether there is one) and the exact time left."""
    return (
        bool(standing.incarnation), standing.version, standing.round, standing.complete, standing.closed, standing.role, standing.rank,
        standing.world_size, standing.participants, standing.waiting, standing.redundant, standing.deadline_in is None, standing.left_redundancy,
        standing.bootstrap,
    )  # fmt: skip
