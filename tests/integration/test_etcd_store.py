"""EtcdStore (v2 and v3) against a real etcd: the shared c10d store contract and more."""

from __future__ import annotations

import threading
import time

import pytest

from rdzv_core.api import RendezvousStateError
from rdzv_core.store import StoreTimeoutError
from rdzv_etcd.backend import create_kv
from rdzv_etcd.client import EtcdConfig
from rdzv_etcd.store import EtcdStore
from tests.contracts import StoreContract
from tests.fixtures_etcd import raw_put, unique_run_id

pytestmark = pytest.mark.integration


def _kv(server, api):
    return create_kv(EtcdConfig.from_endpoint(server.endpoint, {"read_timeout": 10}), api)


@pytest.fixture
def store_factory(etcd_server):
    """``make(api, prefix=None) -> EtcdStore`` with its own connection pool."""
    kvs = []

    def make(api, prefix=None):
        kv = _kv(etcd_server, api)
        kvs.append(kv)
        return EtcdStore(kv, prefix or f"/rdzv-test/{unique_run_id('store')}/", timeout=10)

    yield make
    for kv in kvs:
        kv.close()


class _EtcdStoreFixtures:
    api: str

    @pytest.fixture
    def store(self, store_factory):
        return store_factory(self.api)

    @pytest.fixture
    def other_store(self, store_factory, store):
        return store_factory(self.api, store.prefix)


class TestEtcdV2StoreContract(_EtcdStoreFixtures, StoreContract):
    api = "v2"


class TestEtcdV3StoreContract(_EtcdStoreFixtures, StoreContract):
    api = "v3"


def test_num_keys_counts_only_the_stores_prefix(store_factory, etcd_api):
    store, neighbour = store_factory(etcd_api), store_factory(etcd_api)
    neighbour.multi_set(["x", "y", "z"], [b"1", b"2", b"3"])
    assert store.num_keys() == 0
    store.set("a/b", b"nested-looking key")
    store.set("a", b"its 'parent'")
    assert store.num_keys() == 1 + 1
    assert neighbour.num_keys() == 3


def test_blocking_get_watches_instead_of_polling(store_factory, etcd_api):
    store, writer = store_factory(etcd_api), store_factory(etcd_api)
    writer = EtcdStore(writer._kv, store.prefix)
    reads = []
    original = store._kv.get_many
    store._kv.get_many = lambda keys: reads.append(list(keys)) or original(keys)
    store.set_timeout(1.0)
    with pytest.raises(StoreTimeoutError):
        store.get("never")
    assert len(reads) == 1  # one read, then one watch until the deadline
    reads.clear()
    store.set_timeout(10)
    thread = threading.Thread(target=lambda: (time.sleep(0.3), writer.set("soon", b"v")))
    thread.start()
    assert store.get("soon") == b"v"
    thread.join(10)
    assert len(reads) == 2  # the first read, and the re-read after the watch fired


def test_wait_for_many_keys_set_in_any_order(store_factory, etcd_api):
    store, writer = store_factory(etcd_api), store_factory(etcd_api)
    writer = EtcdStore(writer._kv, store.prefix)
    keys = [f"k{i}" for i in range(6)]

    def write():
        for key in reversed(keys):
            writer.set(key, key.encode())

    thread = threading.Thread(target=write)
    thread.start()
    assert store.multi_get(keys) == [key.encode() for key in keys]
    thread.join(10)


def test_wait_sees_a_key_deleted_and_recreated(store_factory, etcd_api):
    store = store_factory(etcd_api)
    store.set("flap", b"1")
    assert store.delete_key("flap")
    with pytest.raises(StoreTimeoutError, match="flap"):
        store.wait(["flap"], 0.2)


def test_multi_set_of_many_keys(store_factory, etcd_api):
    store = store_factory(etcd_api)
    keys = [f"many{i}" for i in range(300)]  # more than one v3 transaction
    store.multi_set(keys, [str(i) for i in range(300)])
    assert store.num_keys() == 300
    assert store.multi_get(keys)[::100] == [b"0", b"100", b"200"]
    assert store.check(keys)


def test_compare_set_races_have_one_winner(store_factory, etcd_api):
    stores = [store_factory(etcd_api)]
    stores += [EtcdStore(store_factory(etcd_api)._kv, stores[0].prefix) for _ in range(3)]
    results = [None] * 4
    barrier = threading.Barrier(4)

    def race(i):
        barrier.wait(10)
        results[i] = stores[i].compare_set("lock", b"", f"owner{i}".encode())

    threads = [threading.Thread(target=race, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    winner = stores[0].get("lock")
    assert results.count(winner) == 4  # the winner got its value; the others saw it


def test_append_concurrently(store_factory, etcd_api):
    store = store_factory(etcd_api)
    other = EtcdStore(store_factory(etcd_api)._kv, store.prefix)

    def append(s, tag):
        for _ in range(20):
            s.append("log", tag)

    threads = [threading.Thread(target=append, args=(s, t)) for s, t in ((store, b"a"), (other, b"b"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    value = store.get("log")
    assert sorted(value) == sorted(b"a" * 20 + b"b" * 20)


def test_v2_value_not_written_by_rdzv_is_a_state_error(store_factory, etcd_server):
    store = store_factory("v2")
    raw_put(etcd_server, "v2", store.prefix + "raw", b"%% not base64 %%")
    with pytest.raises(RendezvousStateError, match="base64"):
        store.get("raw")
