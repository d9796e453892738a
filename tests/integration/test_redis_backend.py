"""Redis-specific behaviour of RedisRendezvousBackend beyond the shared contract."""

from __future__ import annotations

import statistics
import threading
import time

import pytest

from rdzv_core.api import RendezvousStateError
from rdzv_core.backend import RoundSpec
from rdzv_redis.backend import STATE_MAGIC
from rdzv_redis.client import RedisClient
from rdzv_redis.keys import RunKeys

pytestmark = pytest.mark.integration


def rdzv_threads() -> list[threading.Thread]:
    """Threads of rdzv_redis (only the reconnect thread exists, and only while connecting)."""
    return [t for t in threading.enumerate() if t.name.startswith("rdzv-redis")]


def pubsub_connections(redis_raw, channel: str) -> int:
    """Pub/sub connections subscribed to ``channel`` (``PUBSUB NUMSUB``)."""
    return int(dict(redis_raw.pubsub_numsub(channel))[channel.encode()])


def _fill_membership(backend) -> None:
    """A participant, a waiting and a redundant node: every membership key exists."""
    spec = RoundSpec(1, 2, 1.0, 30.0)
    for node in ("a", "b", "r"):  # a, b complete the round; r is redundant
        backend.join_round(node, spec)
    backend.leave_round("a", spec)  # room appears
    backend.join_round("w", spec)  # waits for the next round


def test_keys_share_one_hash_tag_slot(redis_backend_factory, redis_run_id, redis_raw):
    from redis.crc import key_slot

    backend, store = redis_backend_factory(redis_run_id)
    backend.set_state(b"s")
    backend.keep_alive("n", 30)
    store.set("k", b"v")
    backend.enqueue_join("n")
    _fill_membership(backend)
    keys = RunKeys(redis_run_id)
    assert sorted(k.decode() for k in redis_raw.keys(f"rdzv:{{{redis_run_id}}}:*")) == sorted(keys.all_keys())
    assert len({key_slot(k.encode()) for k in keys.all_keys()}) == 1


def test_token_format_and_stored_layout(redis_backend_factory, redis_raw):
    backend, _ = redis_backend_factory()
    _, token1, _ = backend.set_state(b"payload")
    _, token2, _ = backend.set_state(b"payload2", token1)
    assert token1.startswith("1-") and token2.startswith("2-")
    assert redis_raw.get(backend.keys.state) == STATE_MAGIC + token2.encode() + b"\n" + b"payload2"


def test_vanished_state_returns_none(redis_backend_factory, redis_raw):
    backend, _ = redis_backend_factory()
    _, token, _ = backend.set_state(b"v1")
    redis_raw.delete(backend.keys.state)
    assert backend.set_state(b"v2", token) is None


def test_foreign_token_types_do_not_set(redis_backend_factory):
    backend, _ = redis_backend_factory()
    _, token, _ = backend.set_state(b"v1")
    for foreign in (b"1-0000000000000000", 1, "", "1-nothex"):
        assert backend.set_state(b"v2", foreign) == (b"v1", token, False)


def test_retried_write_is_reported_as_applied(redis_backend_factory):
    """A set_state retried after a lost reply re-sends its nonce and sees has_set=True."""
    backend, _ = redis_backend_factory()
    _, token, _ = backend.set_state(b"v1")
    script = backend._client.scripts["set_state"]
    args = [token, "00000000deadbeef", b"v2", 60_000, backend.keys.state_channel]
    first = script(keys=backend.keys.all_keys(), args=args)
    again = script(keys=backend.keys.all_keys(), args=args)
    assert first == again == [1, b"2-00000000deadbeef"]


@pytest.mark.parametrize("raw", [b"RDZV1 no-newline", b"RDZV1 bad token\nstate", b"", b"{json: 1}\n"])
def test_corrupt_values_raise_state_error(redis_backend_factory, redis_raw, raw):
    backend, _ = redis_backend_factory()
    redis_raw.set(backend.keys.state, raw)
    with pytest.raises(RendezvousStateError, match="corrupt"):
        backend.get_state()
    with pytest.raises(RendezvousStateError):
        backend.set_state(b"x")  # create-only sees a (corrupt) state
    assert backend.wait_for_change("1-0000000000000000", 0) is True  # unreadable differs


def test_wrong_redis_type_raises_state_error(redis_backend_factory, redis_raw):
    backend, _ = redis_backend_factory()
    redis_raw.hset(backend.keys.state, "f", "v")
    with pytest.raises(RendezvousStateError, match="wrong type"):
        backend.get_state()


def test_key_ttl_is_per_backend_on_a_shared_client(redis_backend_factory, redis_raw, redis_run_id):
    """key_ttl is not part of a shared client's identity: each backend and store keeps its own."""
    first, _ = redis_backend_factory(key_ttl=1000)
    short, short_store = redis_backend_factory(f"{redis_run_id}-short", key_ttl=100)
    assert short._client is first._client
    short.set_state(b"v")
    short_store.set("k", b"v")
    assert 90_000 < redis_raw.pttl(short.keys.state) <= 100_000
    assert 90_000 < redis_raw.pttl(short_store.hash_key) <= 100_000


def test_keys_expire_and_writes_refresh_them(redis_backend_factory, redis_raw):
    backend, store = redis_backend_factory(key_ttl=100)
    _, token, _ = backend.set_state(b"v")
    store.set("k", b"v")
    backend.keep_alive("node", 30)
    backend.enqueue_join("node")
    _fill_membership(backend)
    for key in backend.keys.all_keys():
        assert 90_000 < redis_raw.pttl(key) <= 100_000, key
    redis_raw.pexpire(backend.keys.state, 5_000)
    redis_raw.pexpire(backend.keys.store, 5_000)
    backend.keep_alive("other-node", 30)  # a keep-alive refreshes the whole run
    assert redis_raw.pttl(backend.keys.state) > 90_000
    assert redis_raw.pttl(backend.keys.store) > 90_000


def test_default_key_ttl_is_one_day(redis_backend_factory, redis_raw):
    backend, _ = redis_backend_factory()
    backend.set_state(b"v")
    assert 86_000_000 < redis_raw.pttl(backend.keys.state) <= 86_400_000


def test_script_reload_after_script_flush(redis_backend_factory, redis_raw):
    backend, store = redis_backend_factory()
    _, token, _ = backend.set_state(b"v1")
    redis_raw.script_flush()
    assert not any(redis_raw.script_exists(backend._client.scripts["set_state"].sha))
    state, token2, has_set = backend.set_state(b"v2", token)
    assert has_set and state == b"v2"
    redis_raw.script_flush()
    store.set("k", b"v")
    assert store.add("n", 2) == 2
    backend.keep_alive("a", 10)
    assert backend.heartbeat_ages(["a"])[0] is not None


def test_liveness_record_lapses_after_ttl(redis_backend_factory):
    backend, _ = redis_backend_factory()
    backend.keep_alive("short", 0.2)
    backend.keep_alive("long", 30)
    assert backend.heartbeat_ages(["short"])[0] is not None
    deadline = time.monotonic() + 5
    while backend.heartbeat_ages(["short"])[0] is not None:  # the record lapses on the server clock
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert backend.heartbeat_ages(["long", "short"])[0] is not None


def test_heartbeat_ages_of_many_nodes_in_order(redis_backend_factory):
    backend, _ = redis_backend_factory()
    nodes = [f"node-{i}" for i in range(1200)]
    for node in nodes[::2]:
        backend.keep_alive(node, 60)
    ages = backend.heartbeat_ages(nodes)
    assert len(ages) == 1200
    assert all(a is not None and 0 <= a < 30 for a in ages[::2])
    assert all(a is None for a in ages[1::2])
    assert backend.heartbeat_ages([]) == []


def test_clients_are_shared_and_closed_with_the_last_user(redis_backend_factory, redis_run_id, redis_raw):
    backend1, store1 = redis_backend_factory(redis_run_id, connect_timeout=4.25)
    backend2, store2 = redis_backend_factory(redis_run_id, connect_timeout=4.25)
    client = backend1._client
    assert backend2._client is client and store1._client is client and store2._client is client
    assert client.notifier.wait_subscribed(5)
    channel = RunKeys(redis_run_id).round_channel
    assert pubsub_connections(redis_raw, channel) == 1  # one connection for both backends
    assert rdzv_threads() == []  # the waiters read it themselves: no listener thread
    backend1.wait_for_change(None, 0)
    for thing in (backend1, store1, backend2, store2):
        thing.close()
        thing.close()  # idempotent
    assert client.config.connection_key() not in RedisClient._registry
    assert not client.notifier.subscribed and pubsub_connections(redis_raw, channel) == 0


def test_many_waiters_share_one_connection_and_wake_fast(redis_backend_factory, redis_run_id):
    """200 node objects of one shared client waiting at once: one of them reads the pub/sub
    socket for all (no listener thread); all wake on one write."""
    made = [redis_backend_factory(redis_run_id, connect_timeout=4.5)[0] for _ in range(200)]
    assert made[0]._client.notifier.wait_subscribed(5)
    _, token, _ = made[0].set_state(b"v1")
    woke: list[float] = []
    lock = threading.Lock()
    ready = threading.Barrier(len(made) + 1)

    def wait(backend):
        ready.wait(10)
        if backend.wait_for_change(token, 10):
            with lock:
                woke.append(time.monotonic())

    threads = [threading.Thread(target=wait, args=(b,)) for b in made]
    for t in threads:
        t.start()
    ready.wait(10)
    time.sleep(0.2)  # let them block; the assertion does not depend on it
    written_at = time.monotonic()
    made[1].set_state(b"v2", token)
    for t in threads:
        t.join(10)
    assert len(woke) == 200
    assert max(woke) - written_at < 1.0
    assert rdzv_threads() == []


def test_wake_up_latency(redis_backend_factory, redis_run_id):
    """Median time from a set_state by another client to the waiter waking: milliseconds."""
    waiter_backend, _ = redis_backend_factory(redis_run_id)
    writer_backend, _ = redis_backend_factory(redis_run_id, connect_timeout=4.75)
    _, token, _ = writer_backend.set_state(b"v0")
    latencies = []
    for i in range(20):
        woke = threading.Event()
        result = {}

        def wait(tok=token, result=result, woke=woke):
            result["changed"] = waiter_backend.wait_for_change(tok, 5)
            result["at"] = time.monotonic()
            woke.set()

        thread = threading.Thread(target=wait)
        thread.start()
        time.sleep(0.02)
        start = time.monotonic()
        _, token, _ = writer_backend.set_state(b"v%d" % (i + 1), token)
        assert woke.wait(5) and result["changed"]
        latencies.append(result["at"] - start)
        thread.join(5)
    median = statistics.median(latencies)
    print(f"wake-up latency: median {median * 1000:.2f} ms, max {max(latencies) * 1000:.2f} ms")
    assert median < 0.05


@pytest.mark.parametrize("write_during_outage", [False, True])
def test_waiters_survive_a_pubsub_disconnect(redis_backend_factory, redis_run_id, redis_raw, write_during_outage):
    """CLIENT KILL of the pub/sub connection: the notifier reconnects and waiters re-check,
    so a change made while nobody listened is not missed."""
    waiter_backend, _ = redis_backend_factory(redis_run_id)
    writer_backend, _ = redis_backend_factory(redis_run_id, connect_timeout=4.7)
    _, token, _ = writer_backend.set_state(b"v1")
    notifier = waiter_backend._client.notifier
    assert notifier.wait_subscribed(5)
    result = {}
    thread = threading.Thread(target=lambda: result.update(changed=waiter_backend.wait_for_change(token, 10)))
    thread.start()
    time.sleep(0.1)  # let it block; the assertions do not depend on it
    redis_raw.client_kill_filter(_type="pubsub")
    if not write_during_outage:
        assert notifier.wait_subscribed(5)
    written_at = time.monotonic()
    writer_backend.set_state(b"v2", token)
    thread.join(10)
    assert result["changed"] is True
    assert time.monotonic() - written_at < 3


def test_repeated_keep_alives_are_coalesced(redis_backend_factory, redis_raw):
    backend, _ = redis_backend_factory()
    backend.keep_alive("warm-up", 30)  # the script is loaded (after a SCRIPT FLUSH elsewhere)

    def evals():
        return int(redis_raw.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0))

    before = evals()
    for _ in range(10):
        backend.keep_alive("node", 30)
    assert evals() - before == 1
    backend.forget_node("node")
    backend.keep_alive("node", 30)  # forgotten: recorded again at once
    assert backend.heartbeat_ages(["node"])[0] is not None
