"""The Redis membership (``scripts/round.lua``) against the contract suite (which includes a
seeded differential run against :mod:`rdzv_core.rounds`), plus what only a real server shows:
one command per operation (counted by the server's slow log), the ``"<inc>:<ver>"``
announcements, key expiry, one private client per backend, data loss, a corrupt record."""

from __future__ import annotations

import time
import uuid

import pytest

from rdzv_core.api import RendezvousParameters, RendezvousStateError
from rdzv_core.backend import Role, RoundSpec
from tests.contracts import MembershipContract

pytestmark = pytest.mark.integration

SPEC = RoundSpec(min_nodes=2, max_nodes=3, last_call=5.0, dead_after=5.0)


class TestRedisMembership(MembershipContract):
    @pytest.fixture
    def membership(self, redis_backend_factory, redis_run_id):
        return lambda: redis_backend_factory(redis_run_id)[0]


@pytest.fixture
def private(own_redis_server):
    """A private server (nothing else talks to it), a raw client and a backend factory."""
    import redis

    from rdzv_redis import create_backend

    server = own_redis_server()
    raw = redis.Redis(host=server.host, port=server.port)
    made = []

    def make(run_id="run"):
        backend, store = create_backend(
            RendezvousParameters("redis", f"{server.host}:{server.port}", run_id, 1, 1), shared=False
        )
        made.extend([backend, store])
        return backend

    yield server, raw, make
    for thing in made:
        thing.close()
    raw.close()


def _top_level_commands(raw, since_id):
    """The commands clients sent since slow-log entry ``since_id`` (``slowlog-log-slower-than
    0`` logs every command; the ones a script runs are logged with the address ``?:0``), minus
    the raw client's own."""
    own = raw.client_info()["addr"]
    entries = raw.slowlog_get(1000)
    return [
        e["command"].split()[0].decode().upper()
        for e in reversed(entries)
        if e["id"] > since_id and e["client_address"].decode() not in (own, "?:0")
    ]


def test_each_operation_is_one_command_on_the_server(private):
    _, raw, make = private
    raw.config_set("slowlog-log-slower-than", 0)
    raw.config_set("slowlog-max-len", 1000)
    backend = make()
    assert backend._client.notifier.wait_subscribed(5.0)  # its pub/sub connection is set up
    backend.round_standing("warm-up")  # loads the script once (NOSCRIPT -> SCRIPT LOAD)
    calls = {
        "join a": lambda: backend.join_round("a", SPEC),
        "join b": lambda: backend.join_round("b", SPEC),
        "join r": lambda: backend.join_round("r", RoundSpec(1, 2, 5.0, 5.0)),
        "keep-alive + sweep": lambda: backend.keep_alive_round("a", SPEC, True),
        "keep-alive": lambda: backend.keep_alive_round("a", SPEC, False),
        "complete": lambda: backend.complete_round("a", SPEC, 0),
        "standing": lambda: backend.round_standing("a"),
        "leave": lambda: backend.leave_round("b", SPEC),
        "close": lambda: backend.close_rendezvous("a"),
    }
    for what, call in calls.items():
        since = raw.slowlog_get(1)[0]["id"]
        call()
        assert _top_level_commands(raw, since) == ["EVALSHA"], what
    seen = backend.round_standing("a").change_id
    since = raw.slowlog_get(1)[0]["id"]
    assert backend._client.notifier.wait_subscribed(5.0)
    assert backend.wait_for_round_change(seen, 0) is False  # answered by the announcements read, or one HMGET
    assert _top_level_commands(raw, since) in ([], ["HMGET"])


def test_a_change_announced_while_nobody_waited_is_seen_by_a_check_that_does_not_block(private):
    """Nothing reads a client's pub/sub socket between waits: a check with timeout 0 (what
    num_nodes_waiting() does) first reads what arrived, so the change is not missed."""
    _, raw, make = private
    a, b = make(), make()
    assert a._client.notifier.wait_subscribed(5.0)
    seen = a.join_round("a", SPEC).change_id
    assert a.wait_for_round_change(seen, 0) is False
    b.join_round("b", SPEC)  # min reached: the last call starts, announced
    # The message may still be on its way when b's reply is in; once it has arrived, the check
    # sees it (no thread reads the socket in between: the check reads what has arrived).
    deadline = time.monotonic() + 5
    while not a.wait_for_round_change(seen, 0):
        assert time.monotonic() < deadline, "the announcement was never seen"
        time.sleep(0.01)
    assert a.wait_for_round_change(a.round_standing("a").change_id, 0) is False


def test_changes_are_announced_as_incarnation_and_version(private):
    _, raw, make = private
    backend = make()
    pubsub = raw.pubsub()
    pubsub.subscribe(backend.keys.round_channel)
    assert pubsub.get_message(timeout=5)["type"] == "subscribe"
    created = backend.join_round("a", SPEC)  # new record
    unchanged = backend.join_round("a", SPEC)  # no summary change: not announced
    started = backend.join_round("b", SPEC)  # min reached: the last call starts
    messages = [pubsub.get_message(timeout=5) for _ in range(2)]
    assert [m["data"].decode() for m in messages] == [
        f"{created.incarnation}:{created.version}",
        f"{started.incarnation}:{started.version}",
    ]
    assert unchanged.version == created.version and pubsub.get_message(timeout=0.2) is None
    pubsub.close()


def test_every_write_refreshes_the_expiry_of_the_run(private):
    _, raw, make = private
    backend = make()
    backend.keep_alive_round("a", SPEC, True)  # no record: only the keep-alive is written
    assert not raw.exists(backend.keys.round)
    assert 0 < raw.pttl(backend.keys.alive) and 0 < raw.pttl(backend.keys.alive_until)
    backend.join_round("a", SPEC)
    backend.join_round("b", SPEC)
    backend.leave_round("b", SPEC)
    backend.join_round("b", RoundSpec(1, 2, 5.0, 5.0))
    backend.join_round("w", RoundSpec(1, 2, 5.0, 5.0))  # the round is full: redundancy list
    for key in (
        backend.keys.round,
        backend.keys.participants,
        backend.keys.redundancy_list,
        backend.keys.alive,
        backend.keys.alive_until,
    ):
        assert 0 < raw.pttl(key) <= backend._ttl_ms, key


def test_a_private_client_per_backend(private):
    from rdzv_redis import create_backend

    server, _, make = private
    one, two = make(), make()
    assert one._client is not two._client and one._client.notifier is not two._client.notifier
    params = RendezvousParameters("redis", f"{server.host}:{server.port}", "shared-run", 1, 1)
    (a, a_store), (b, b_store) = create_backend(params), create_backend(params)
    try:
        assert a._client is b._client  # the default: one client per process and configuration
    finally:
        for thing in (a, a_store, b, b_store):
            thing.close()
    backend, store = create_backend(params, shared=False)
    try:
        assert backend._client is store._client and backend._client is not one._client
    finally:
        backend.close()
        store.close()
    assert backend._client._closed  # the last reference closed it


def test_data_loss_gives_the_empty_standing_and_a_new_incarnation(private):
    _, raw, make = private
    backend = make()
    first = backend.join_round("a", SPEC)
    raw.flushall()
    lost = backend.round_standing("a")
    assert (lost.incarnation, lost.role) == ("", Role.NONE)
    again = backend.join_round("a", SPEC)
    assert again.incarnation and again.incarnation != first.incarnation and again.role is Role.PARTICIPANT


def test_a_corrupt_record_is_a_state_error(private):
    _, raw, make = private
    backend = make(f"run-{uuid.uuid4().hex[:6]}")
    backend.join_round("a", SPEC)
    raw.hset(backend.keys.round, "round", "not-a-number")
    with pytest.raises(RendezvousStateError, match="round"):
        backend.join_round("b", SPEC)
    for call in (
        lambda: backend.round_standing("a"),
        lambda: backend.keep_alive_round("a", SPEC, True),
        backend.membership_state,
    ):
        with pytest.raises(RendezvousStateError):
            call()
    assert backend.wait_for_round_change(("x", 1), 0) is True  # differs; the next operation reports it
    raw.hdel(backend.keys.round, "round")
    raw.hset(backend.keys.round, "round", "0")
    raw.hdel(backend.keys.round, "inc")  # fields without an incarnation: not rdzv's either
    with pytest.raises(RendezvousStateError, match="inc"):
        backend.join_round("b", SPEC)


def test_a_key_of_the_wrong_type_is_a_state_error(private):
    _, raw, make = private
    backend = make()
    raw.set(backend.keys.participants, "x")
    with pytest.raises(RendezvousStateError):
        backend.join_round("a", SPEC)


def test_all_keys_share_one_slot(redis_backend_factory):
    from redis.crc import key_slot

    backend, _ = redis_backend_factory()
    assert len({key_slot(k.encode()) for k in backend.keys.round_keys()}) == 1


def test_after_a_reconnection_one_read_answers_the_checks_until_the_next_announcement(own_redis_server):
    """A server restart re-makes the pub/sub connection, and the announcements of the round
    re-formed afterwards may come before this client re-subscribed: its checks then read the
    round id once and trust it (found by the network lab: a node polled the server on every
    num_nodes_waiting() call after a restart, for as long as its round did not change)."""
    import redis

    from rdzv_redis import create_backend

    server = own_redis_server()
    raw = redis.Redis(host=server.host, port=server.port)
    backend, store = create_backend(
        RendezvousParameters("redis", f"{server.host}:{server.port}", "run", 1, 1, retry_timeout=10), shared=False
    )
    try:
        notifier = backend._client.notifier
        assert notifier.wait_subscribed(5.0)
        backend.join_round("a", SPEC)
        before = notifier.epoch
        server.restart()  # empty; connections are gone
        raw = redis.Redis(host=server.host, port=server.port)
        seen = backend.join_round("a", SPEC).change_id  # a new incarnation, announced before re-subscribing or not
        deadline = time.monotonic() + 10
        while not (notifier.epoch >= before + 2 and notifier.subscribed):  # the loss seen, then re-subscribed
            backend.wait_for_round_change(seen, 0)  # a check reads the socket: that is how the loss is seen
            assert time.monotonic() < deadline, "the pub/sub connection was not re-made"
            time.sleep(0.02)
        assert backend.wait_for_round_change(seen, 0) is False  # at most one HMGET
        raw.config_set("slowlog-log-slower-than", 0)
        raw.config_set("slowlog-max-len", 1000)
        since = raw.slowlog_get(1)[0]["id"] if raw.slowlog_get(1) else -1
        for _ in range(5):
            assert backend.wait_for_round_change(seen, 0) is False
        assert _top_level_commands(raw, since) == []  # no read: the first check's read stands
        other, other_store = create_backend(
            RendezvousParameters("redis", f"{server.host}:{server.port}", "run", 1, 1), shared=False
        )
        try:
            other.join_round("b", SPEC)  # announced: the next check sees the change
            deadline = time.monotonic() + 5
            while not backend.wait_for_round_change(seen, 0):
                assert time.monotonic() < deadline, "the change after the noted read was never seen"
                time.sleep(0.01)
        finally:
            other.close()
            other_store.close()
    finally:
        backend.close()
        store.close()
        raw.close()
