"""The Redis membership (``scripts/round.lua``) against the contract suite, plus what only a
real server shows: one command per operation, data loss, a corrupt record."""

from __future__ import annotations

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
        backend, store = create_backend(RendezvousParameters("redis", f"{server.host}:{server.port}", run_id, 1, 1), shared=False)
        made.extend([backend, store])
        return backend

    yield server, raw, make
    for thing in made:
        thing.close()
    raw.close()


def test_each_operation_is_one_command(private, monkeypatch):
    _, _, make = private
    backend = make()
    backend.round_standing("warm-up")  # loads the script once
    sent: list[str] = []
    redis = backend._client.redis
    inner = redis.execute_command
    monkeypatch.setattr(redis, "execute_command", lambda *args, **kw: sent.append(str(args[0])) or inner(*args, **kw))
    calls = [
        lambda: backend.join_round("a", SPEC),
        lambda: backend.join_round("b", SPEC),
        lambda: backend.keep_alive_round("a", SPEC, True),
        lambda: backend.complete_round("a", SPEC, 0),
        lambda: backend.round_standing("a"),
        lambda: backend.leave_round("b", SPEC),
        lambda: backend.close_rendezvous("a"),
    ]
    for call in calls:
        sent.clear()
        call()
        assert sent == ["EVALSHA"]


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
    with pytest.raises(RendezvousStateError):
        backend.round_standing("a")


def test_all_keys_share_one_slot(redis_backend_factory):
    from redis.crc import key_slot

    backend, _ = redis_backend_factory()
    assert len({key_slot(k.encode()) for k in backend.keys.round_keys()}) == 1
