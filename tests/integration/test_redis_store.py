"""Redis-specific behaviour of RedisStore beyond the shared contract."""

from __future__ import annotations

import threading
import time

import pytest

from rdzv_core.store import StoreTimeoutError

pytestmark = pytest.mark.integration

OTHER_CLIENT = {"socket_timeout": 9.5}


def run_later(fn, *args):
    thread = threading.Thread(target=fn, args=args)
    thread.start()
    return thread


def test_data_lives_in_one_hash_per_run(redis_backend_factory, redis_raw):
    _, store = redis_backend_factory()
    store.multi_set(["a", "b"], [b"1", b"2"])
    assert redis_raw.hgetall(store.hash_key) == {b"a": b"1", b"b": b"2"}
    assert store.num_keys() == 2


def test_num_keys_and_keys_are_per_run(redis_backend_factory):
    _, store_a = redis_backend_factory("run-a-" + str(time.monotonic_ns()))
    _, store_b = redis_backend_factory("run-b-" + str(time.monotonic_ns()))
    store_a.set("k", b"A")
    store_a.set("k2", b"A")
    store_b.set("k", b"B")
    assert (store_a.num_keys(), store_b.num_keys()) == (2, 1)
    assert (store_a.get("k"), store_b.get("k")) == (b"A", b"B")


@pytest.mark.parametrize("op", ["get", "multi_get", "wait"])
def test_blocking_reads_wake_when_another_client_writes(redis_backend_factory, redis_run_id, op):
    _, reader = redis_backend_factory(redis_run_id)
    _, writer = redis_backend_factory(redis_run_id, **OTHER_CLIENT)
    reader.set_timeout(10)
    writer.set("first", b"1")
    result = {}

    def read():
        if op == "get":
            result["value"] = reader.get("second")
        elif op == "multi_get":
            result["value"] = reader.multi_get(["first", "second"])
        else:
            result["value"] = reader.wait(["first", "second"])
        result["at"] = time.monotonic()

    thread = run_later(read)
    time.sleep(0.1)  # let the reader block; the assertions below do not depend on it
    assert thread.is_alive()
    written_at = time.monotonic()
    writer.set("second", b"2")
    thread.join(10)
    assert not thread.is_alive()
    assert result["at"] - written_at < 0.5
    expected = {"get": b"2", "multi_get": [b"1", b"2"], "wait": None}[op]
    assert result["value"] == expected


def test_wait_needs_all_keys_and_ignores_others(redis_backend_factory, redis_run_id):
    _, reader = redis_backend_factory(redis_run_id)
    _, writer = redis_backend_factory(redis_run_id, **OTHER_CLIENT)
    done = threading.Event()
    thread = run_later(lambda: (reader.wait(["x", "y"], 10), done.set()))
    writer.set("unrelated", b"1")
    writer.set("x", b"1")
    assert not done.wait(0.2)
    writer.add("y", 1)
    assert done.wait(5)
    thread.join(5)


def test_wait_timeout_names_missing_keys(redis_backend_factory):
    _, store = redis_backend_factory()
    store.set("here", b"1")
    with pytest.raises(StoreTimeoutError, match="gone"):
        store.wait(["here", "gone"], 0.1)
    with pytest.raises(StoreTimeoutError):
        store.wait(["gone"], 0)


def test_compare_set_wakes_getters_and_append_creates(redis_backend_factory, redis_run_id):
    _, reader = redis_backend_factory(redis_run_id)
    _, writer = redis_backend_factory(redis_run_id, **OTHER_CLIENT)
    reader.set_timeout(5)
    result = {}
    thread = run_later(lambda: result.update(v=reader.get("cas")))
    assert writer.compare_set("cas", b"", b"won") == b"won"
    thread.join(5)
    assert result["v"] == b"won"
    writer.append("log", b"a")
    writer.append("log", b"b")
    assert reader.get("log") == b"ab"


def test_add_overflow_and_empty_value(redis_backend_factory):
    _, store = redis_backend_factory()
    store.set("big", str(2**63 - 1))
    with pytest.raises(ValueError, match="big"):
        store.add("big", 1)
    store.set("empty", b"")
    with pytest.raises(ValueError, match="empty"):
        store.add("empty", 1)
    with pytest.raises(TypeError):
        store.add("n", 1.5)


def test_delete_then_get_blocks_again(redis_backend_factory):
    _, store = redis_backend_factory()
    store.set("k", b"v")
    assert store.delete_key("k")
    store.set_timeout(0.1)
    with pytest.raises(StoreTimeoutError):
        store.get("k")


def test_empty_batches(redis_backend_factory):
    _, store = redis_backend_factory()
    store.multi_set([], [])
    assert store.multi_get([]) == []
    store.wait([])
    assert store.check([])


def _subscribers(redis_raw, channels: list[str]) -> int:
    return sum(int(count) for _, count in redis_raw.pubsub_numsub(*channels))


def _until(condition, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def test_concurrent_gets_on_one_client_each_wake_for_their_own_key(redis_backend_factory, redis_raw):
    """Twenty threads block in get() on one shared client, each for its own key: one of them
    reads the pub/sub socket for all (no listener thread); each returns when its own key is
    written, and nobody stays subscribed once nobody waits."""
    _, store = redis_backend_factory()
    _, writer = redis_backend_factory(**OTHER_CLIENT)
    store.set_timeout(20)
    keys = [f"conc-{i}" for i in range(20)]
    channels = [store._channel_prefix + key for key in keys]
    results: dict[str, bytes] = {}
    threads = [threading.Thread(target=lambda k=key: results.update({k: store.get(k)})) for key in keys]
    for t in threads:
        t.start()
    _until(lambda: _subscribers(redis_raw, channels) == len(keys))  # all blocked, one channel each
    for key in reversed(keys):
        writer.set(key, key.upper())
    for t in threads:
        t.join(20)
        assert not t.is_alive()
    assert results == {key: key.upper().encode() for key in keys}
    assert not [t for t in threading.enumerate() if t.name.startswith("rdzv-redis")]
    _until(lambda: _subscribers(redis_raw, channels) == 0)


def test_a_key_that_exists_costs_one_request_and_no_subscription(redis_backend_factory, redis_raw):
    _, store = redis_backend_factory()
    store.set("there", b"1")
    assert store._client.notifier.wait_subscribed(5)  # the backend's own channels, made at creation

    def subscribes() -> int:
        return int(redis_raw.info("commandstats").get("cmdstat_subscribe", {}).get("calls", 0))

    before = subscribes()
    assert store.multi_get(["there"], timeout=5) == [b"1"]
    assert store.get("there") == b"1"
    assert subscribes() == before
