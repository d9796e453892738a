"""The c10d store contract on HashStore and PrefixStore(HashStore), plus store helpers."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest

from rdzv_core.store import HashStore, PrefixStore, StoreTimeoutError, check_key, to_bytes, to_seconds
from tests.contracts import StoreContract

pytestmark = pytest.mark.unit


class TestHashStore(StoreContract):
    @pytest.fixture
    def store(self):
        return HashStore(timeout=10)


class TestPrefixStoreOverHashStore(StoreContract):
    @pytest.fixture
    def base(self):
        return HashStore(timeout=10)

    @pytest.fixture
    def store(self, base):
        return PrefixStore("ns", base)

    @pytest.fixture
    def other_store(self, base):
        return PrefixStore("ns", base)  # a second client on the same namespace


class TestNestedPrefixStore(StoreContract):
    @pytest.fixture
    def store(self):
        return PrefixStore("inner", PrefixStore("outer", HashStore(timeout=10)))


# -- beyond the contract ---------------------------------------------------------------------


def test_prefix_store_key_layout_and_shared_timeout():
    base = HashStore(timeout=7)
    prefixed = PrefixStore("rdzv.run.3", base)
    prefixed.set("k", b"v")
    assert base.get("rdzv.run.3/k") == b"v"
    assert prefixed.timeout == timedelta(seconds=7)
    prefixed.set_timeout(2)
    assert base.timeout == timedelta(seconds=2)
    prefixed.multi_set(["a", "b"], [b"1", b"2"])
    assert base.multi_get(["rdzv.run.3/a", "rdzv.run.3/b"]) == [b"1", b"2"]
    prefixed.append("c", b"x")
    assert base.get("rdzv.run.3/c") == b"x"
    assert prefixed.delete_key("c") and not base.check(["rdzv.run.3/c"])


def test_prefix_store_needs_a_prefix():
    with pytest.raises(ValueError):
        PrefixStore("", HashStore())


def test_prefix_store_rejects_empty_keys():
    with pytest.raises(ValueError):
        PrefixStore("p", HashStore()).set("", b"v")


def test_wait_wakes_every_waiter_and_is_bounded():
    store = HashStore(timeout=10)
    done = []

    def waiter():
        store.wait(["x", "y"], 10)
        done.append(True)

    threads = [threading.Thread(target=waiter) for _ in range(4)]
    for t in threads:
        t.start()
    store.set("x", b"")
    store.set("y", b"")
    for t in threads:
        t.join(10)
        assert not t.is_alive()
    assert len(done) == 4


def test_timeout_error_names_the_missing_keys():
    store = HashStore()
    store.set("here", b"1")
    with pytest.raises(StoreTimeoutError, match="gone"):
        store.wait(["here", "gone"], timedelta(seconds=0.05))


def test_zero_timeout_checks_once():
    store = HashStore()
    store.set("a", b"")
    store.wait(["a"], 0)
    with pytest.raises(StoreTimeoutError):
        store.wait(["b"], 0)


def test_add_needs_an_int_amount():
    with pytest.raises(TypeError):
        HashStore().add("c", 1.5)
    with pytest.raises(TypeError):
        HashStore().add("c", True)


def test_compare_set_accepts_str():
    store = HashStore()
    assert store.compare_set("k", "", "v") == b"v"
    assert store.compare_set("k", "v", "w") == b"w"


def test_helpers():
    assert to_bytes("é") == "é".encode()
    assert to_bytes(bytearray(b"ab")) == b"ab"
    assert to_bytes(memoryview(b"cd")) == b"cd"
    with pytest.raises(TypeError, match="int"):
        to_bytes(3)
    assert to_seconds(timedelta(milliseconds=1500)) == 1.5
    assert to_seconds(2) == 2.0
    with pytest.raises(ValueError):
        to_seconds(-1)
    with pytest.raises(TypeError):
        to_seconds("1")
    with pytest.raises(TypeError):
        to_seconds(True)
    with pytest.raises(TypeError):
        check_key(1)
    with pytest.raises(ValueError):
        check_key("")
    with pytest.raises(ValueError):
        HashStore(timeout=-1)


class _DeleteAfterWait(HashStore):
    """Deletes the awaited key right after ``wait`` returns: a delete racing a reader."""

    race = False

    def wait(self, keys, timeout=None):
        super().wait(keys, timeout)
        if self.race:
            self.race = False
            self.delete_key(keys[0])


def test_get_racing_a_delete_never_raises_key_error():
    """A delete between "the key exists" and "read it" must not leak a KeyError: get() either
    reads the value or, the key being gone, waits for it like for any missing key."""
    store = _DeleteAfterWait(timeout=0.1)
    store.set("k", b"v")
    store.race = True
    try:
        value = store.get("k")
    except StoreTimeoutError:
        value = None
    assert value in (b"v", None)


def test_multi_get_racing_a_delete_never_raises_key_error():
    store = _DeleteAfterWait(timeout=0.1)
    store.multi_set(["a", "b"], [b"1", b"2"])
    store.race = True
    try:
        values = store.multi_get(["a", "b"])
    except StoreTimeoutError:
        values = None
    assert values in ([b"1", b"2"], None)


def test_get_under_concurrent_deletes():
    store = HashStore(timeout=5)
    stop = threading.Event()

    def churn():
        while not stop.is_set():
            store.set("k", b"v")
            store.delete_key("k")

    thread = threading.Thread(target=churn)
    thread.start()
    try:
        for _ in range(300):
            assert store.get("k") == b"v"
    finally:
        stop.set()
        thread.join(5)
    assert not thread.is_alive()
