"""StoreRendezvousBackend over HashStore: torch's backend contract, change notification, liveness."""

from __future__ import annotations

import threading
import time

import pytest

from rdzv_core.api import RendezvousStateError
from rdzv_core.backend import ChangeNotifier, LivenessTracker
from rdzv_core.store import HashStore, PrefixStore
from rdzv_core.store_backend import StoreRendezvousBackend
from tests.contracts import BackendContract

pytestmark = pytest.mark.unit


class TestStoreBackendOverHashStore(BackendContract):
    @pytest.fixture
    def store(self):
        return HashStore(timeout=10)

    @pytest.fixture
    def backend(self, store):
        return StoreRendezvousBackend(store, "run")

    @pytest.fixture
    def other_backend(self, store):
        return StoreRendezvousBackend(store, "run")

    @pytest.fixture
    def corrupt_state(self, store):
        def write(raw: bytes) -> None:
            store.set("rdzv.run.state", raw)

        return write


class TestStoreBackendOverPrefixStore(TestStoreBackendOverHashStore):
    @pytest.fixture
    def base(self):
        return HashStore(timeout=10)

    @pytest.fixture
    def store(self, base):
        return PrefixStore("job", base)


def test_capabilities_and_name():
    backend = StoreRendezvousBackend(HashStore(), "run")
    assert isinstance(backend, ChangeNotifier)
    assert isinstance(backend, LivenessTracker)
    assert backend.name == "store"
    assert StoreRendezvousBackend(HashStore(), "run", name="memory").name == "memory"


def test_empty_run_id_raises():
    with pytest.raises(ValueError):
        StoreRendezvousBackend(HashStore(), "")


def test_runs_are_isolated():
    store = HashStore()
    a, b = StoreRendezvousBackend(store, "a"), StoreRendezvousBackend(store, "b")
    a.set_state(b"A")
    assert b.get_state() is None
    b.set_state(b"B")
    assert a.get_state()[0] == b"A"


def test_corrupt_generation_prefix_raises_state_error_from_set_state():
    store = HashStore()
    backend = StoreRendezvousBackend(store, "run")
    store.set("rdzv.run.state", b"garbage-without-prefix")
    with pytest.raises(RendezvousStateError, match="rdzv.run.state"):
        backend.set_state(b"x")


def test_vanished_state_returns_none_to_a_token_holder():
    store = HashStore()
    backend = StoreRendezvousBackend(store, "run")
    _, token, _ = backend.set_state(b"v1")
    store.delete_key("rdzv.run.state")
    assert backend.set_state(b"v2", token) is None
    assert backend.get_state() is None


def test_foreign_token_on_absent_state_returns_none():
    assert StoreRendezvousBackend(HashStore(), "run").set_state(b"x", object()) is None


def test_wait_for_change_without_state():
    backend = StoreRendezvousBackend(HashStore(), "run")
    assert backend.wait_for_change(None, 0) is False
    assert backend.wait_for_change(None, 0.05) is False
    backend.set_state(b"v")
    assert backend.wait_for_change(None, 0) is True


def test_concurrent_compare_and_set_has_one_winner_per_token():
    store = HashStore()
    _, token, _ = StoreRendezvousBackend(store, "run").set_state(b"base")
    results = []
    lock = threading.Lock()
    barrier = threading.Barrier(8)

    def writer(i):
        backend = StoreRendezvousBackend(store, "run")
        barrier.wait(5)
        result = backend.set_state(b"w%d" % i, token)
        with lock:
            results.append(result)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
        assert not t.is_alive()
    winners = [r for r in results if r[2]]
    assert len(winners) == 1
    assert all(r[:2] == winners[0][:2] for r in results)


def test_heartbeat_ages_and_forget():
    backend = StoreRendezvousBackend(HashStore(), "run")
    assert backend.heartbeat_ages([]) == []
    backend.keep_alive("n1", 1.0)
    backend.keep_alive("n2", 1.0)
    ages = backend.heartbeat_ages(["n2", "gone", "n1"])
    assert ages[1] is None and all(0 <= age < 5 for age in (ages[0], ages[2]))
    backend.forget_node("n1")
    backend.forget_node("never-seen")  # no error
    assert backend.heartbeat_ages(["n1"]) == [None]


class _ForgetAfterCheck(HashStore):
    """Deletes keys containing ``victim`` right after ``check`` saw them: another node's
    ``forget_node()`` (or a state reset) landing between "does it exist" and "read it"."""

    victim: str | None = None

    def check(self, keys):
        found = super().check(keys)
        if self.victim is not None:
            for key in keys:
                if self.victim in key:
                    self.delete_key(key)
                    self.victim = None
        return found


def test_heartbeat_ages_racing_forget_node_does_not_block():
    store = _ForgetAfterCheck(timeout=5)
    backend = StoreRendezvousBackend(store, "run")
    backend.keep_alive("n1", 1.0)
    backend.keep_alive("n2", 1.0)
    store.victim = "alive.n1"
    started = time.monotonic()
    ages = backend.heartbeat_ages(["n1", "n2"])
    assert time.monotonic() - started < 1.0  # not the store timeout
    assert ages[0] is None or 0 <= ages[0] < 5  # read before or after the delete, atomically
    assert ages[1] is not None


def test_get_state_racing_a_delete_does_not_block():
    store = _ForgetAfterCheck(timeout=5)
    backend = StoreRendezvousBackend(store, "run")
    backend.set_state(b"v1")
    store.victim = "run.state"
    started = time.monotonic()
    assert backend.get_state() in (None, (b"v1", b"1:v1"))
    assert time.monotonic() - started < 1.0
