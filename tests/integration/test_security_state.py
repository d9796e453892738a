"""Hostile or corrupt data planted in the REAL backends' keys (Redis, etcd v2 and v3).

Whatever sits in a run's state key — random bytes, a truncated state, a state of a newer schema
or of another run, a huge blob, a pickle whose ``__reduce__`` would create a marker file —
``next_rendezvous`` raises :class:`RendezvousStateError` promptly: no crash, no hang, no code
execution. The same holds for garbage in the join queue and the liveness records, and for
``rdzv status`` reading the state.

On Redis and etcd v3, rdzv's handler joins through the membership keys (``rdzv:{R}:round*``,
``<run>membership/``), not the state blob, which serves torch's backend contract: the
planted-state tests read the blob through a state-based handler (what a consumer of that
contract does), and the membership keys get garbage of their own
(``test_garbage_in_the_membership_*``, ``test_garbage_in_the_etcd_membership_summary``).
"""

from __future__ import annotations

import json
import os
import pickle
import random
import subprocess
import sys
import time
import uuid

import msgspec
import pytest

from rdzv_core import state as state_module
from rdzv_core.api import RendezvousParameters, RendezvousStateError
from rdzv_core.dynamic import create_handler
from rdzv_core.registry import get_rendezvous_handler
from rdzv_core.state import MAX_STATE_BYTES, SCHEMA_VERSION, RendezvousState, encode_state
from tests.backends import StateOnlyBackend
from tests.fixtures_etcd import etcd_params, raw_put

pytestmark = pytest.mark.integration

#: A planted state must be refused within this many seconds (it is not retried).
PROMPT = 5.0


class Plant:
    """``__reduce__`` creates the marker file: it runs only if something unpickles it."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


class Target:
    """A handler of a fresh run on one backend, and ways to write into that run's keys."""

    def __init__(self, name: str, request: pytest.FixtureRequest, *, blob: bool = True) -> None:
        self.name = name
        self.run_id = f"planted-{uuid.uuid4().hex[:10]}"
        if name == "redis":
            self.server = request.getfixturevalue("redis_server")
            self.raw_redis = request.getfixturevalue("redis_raw")
            self.params = RendezvousParameters(
                "redis", self.server.endpoint, self.run_id, 1, 2, join_timeout=10, last_call_timeout=0.2
            )
        else:
            self.server = request.getfixturevalue("etcd_server")
            self.params = etcd_params(
                self.server, name.split("-")[1], self.run_id, 1, 2, join_timeout=10, last_call_timeout=0.2
            )
        self.handler = get_rendezvous_handler(self.params)
        self.backend = self.handler.backend
        if name in ("redis", "etcd-v3") and blob:  # read the blob as a consumer of torch's contract does
            self.handler._stop_heartbeats()
            self.handler = create_handler(self.handler._store, StateOnlyBackend(self.backend), self.params)

    @property
    def api(self) -> str:
        return self.name.split("-")[-1]

    def plant_framed(self, payload: bytes) -> None:
        """``payload`` as the state, in the backend's own framing (header, token, base64)."""
        self.clear()
        assert self.backend.get_state() is None  # the backend learns that the key is gone
        assert self.backend.set_state(payload)[2]

    def clear(self) -> None:
        if self.name == "redis":
            self.raw_redis.delete(self.backend.keys.state)
        else:
            self.backend.kv.delete(self.backend.keys.state)

    def plant_raw(self, value: bytes) -> None:
        """``value`` as the state key's raw content, bypassing rdzv."""
        if self.name == "redis":
            self.raw_redis.set(self.backend.keys.state, value)
        else:
            raw_put(self.server, self.api, self.backend.keys.state, value)

    def close(self) -> None:
        self.handler._stop_heartbeats()
        self.backend.close()
        close = getattr(self.handler._store, "close", None)
        if close is not None:
            close()


@pytest.fixture(params=["redis", "etcd-v2", "etcd-v3"])
def target(request):
    made = Target(request.param, request)
    yield made
    made.close()


def state_of(run_id: str, **fields) -> bytes:
    return encode_state(RendezvousState(run_id=run_id, round=2, participants={"a_1_0": 0}, **fields))


def refused(handler) -> RendezvousStateError:
    start = time.monotonic()
    with pytest.raises(RendezvousStateError) as info:
        handler.next_rendezvous()
    assert time.monotonic() - start < PROMPT
    assert len(str(info.value)) < 2000
    return info.value


PAYLOADS = {
    "random bytes": lambda run: random.Random(7).randbytes(512),
    "truncated state": lambda run: state_of(run)[:-7],
    "half a state": lambda run: state_of(run)[: len(state_of(run)) // 2],
    "newer schema": lambda run: msgspec.msgpack.encode(
        {"version": SCHEMA_VERSION + 1, "run_id": run, "round": 0, "shiny": [1, 2]}
    ),
    "another run's state": lambda run: state_of("another-run"),
    "wrong field types": lambda run: msgspec.msgpack.encode(
        {"version": 1, "run_id": run, "participants": {"a": "zero"}}
    ),
    "a JSON state": lambda run: json.dumps({"version": 1, "run_id": run}).encode(),
    "a pickled state dict": lambda run: pickle.dumps({"version": 1, "run_id": run}),
    "empty": lambda run: b"",
    "a string that is not UTF-8": lambda run: b"\x82\xa7version\x01\xa6run_id\xa1\xff",
}


@pytest.mark.parametrize("kind", list(PAYLOADS))
def test_planted_state_is_a_state_error(target, kind):
    target.plant_framed(PAYLOADS[kind](target.run_id))
    error = refused(target.handler)
    if kind == "newer schema":
        assert "newer" in str(error)
    if kind == "another run's state":
        assert "another-run" in str(error)
    with pytest.raises(RendezvousStateError):
        target.handler.num_nodes_waiting()
    with pytest.raises(RendezvousStateError):
        target.handler.is_closed()


@pytest.mark.parametrize("raw", [b"\x00\xff" * 64, b"RDZV", b"RDZV1 not-a-token\n\x81\xa1a\x01", b"x" * 10_000])
def test_raw_garbage_in_the_state_key_is_a_state_error(target, raw):
    if target.api == "v2" and raw.startswith(b"RDZV"):
        raw = raw.replace(b"RDZV", b"RDZW")  # v2 values are base64: anything raw is foreign
    target.plant_raw(raw)
    refused(target.handler)


def test_huge_state_is_refused_before_decoding(target, monkeypatch):
    if target.name == "redis":
        size = MAX_STATE_BYTES + 1  # the real limit: 64 MiB + 1 in the real key
    else:  # etcd refuses requests this large (--max-request-bytes): a smaller limit here
        size = 1024 * 1024 + 1
        monkeypatch.setattr(state_module, "MAX_STATE_BYTES", size - 1)
    target.plant_framed(b"\x00" * size)
    error = refused(target.handler)
    assert "limit" in str(error)


@pytest.mark.parametrize("framed", [True, False], ids=["framed", "raw"])
def test_malicious_pickle_is_never_unpickled(target, tmp_path, framed):
    marker = tmp_path / "pwned"
    for protocol in (0, 2, pickle.HIGHEST_PROTOCOL):
        payload = pickle.dumps(Plant(str(marker)), protocol=protocol)
        if framed:
            target.plant_framed(payload)
        else:
            target.plant_raw(payload)
        refused(target.handler)
        with pytest.raises(RendezvousStateError):
            target.backend.get_state() if not framed else target.handler.is_closed()
    pickle.loads(pickle.dumps(Plant(str(tmp_path / "control"))))  # the payload does work when unpickled
    assert (tmp_path / "control").exists()
    assert not marker.exists()


def test_status_cli_refuses_a_planted_pickle(target, tmp_path):
    marker = tmp_path / "pwned-by-status"
    if target.name == "redis":  # status reads the membership there
        target.raw_redis.hset(
            target.backend.keys.round,
            mapping={
                "inc": "x",
                "ver": pickle.dumps(Plant(str(marker))),
                "round": 0,
                "complete": 0,
                "closed": 0,
                "world": 0,
                "seq": 0,
            },
        )
    elif target.name == "etcd-v3":  # and there
        raw_put(target.server, "v3", target.backend.membership.summary_key, pickle.dumps(Plant(str(marker))))
    else:
        target.plant_framed(pickle.dumps(Plant(str(marker))))
    conf = "read_timeout=10" if target.name != "redis" else "retry_timeout=2"
    result = subprocess.run(
        [sys.executable, "-m", "rdzv_core.cli", "status", "--backend", target.name, "--endpoint", target.server.endpoint, "--run-id", target.run_id, "--rdzv-conf", conf, "--json"],
        capture_output=True, text=True, timeout=60, cwd=os.getcwd(),
        env={**os.environ, "PYTHONPATH": os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")])},
    )  # fmt: skip
    assert result.returncode != 0
    assert "Traceback" not in result.stderr and "state" in result.stderr.lower()
    assert not marker.exists()


# -- garbage next to the state -----------------------------------------------------------------


def test_garbage_in_the_join_queue_is_a_state_error_or_ignored(target):
    """A join-queue entry rdzv did not write must not crash the node admitting the queue."""
    if target.name == "redis":
        target.raw_redis.zadd(target.backend.keys.joins, {b"\xff\xfe\x00 not utf-8": 1})
    else:
        raw_put(target.server, target.api, target.backend.keys.joins_prefix + "~ZZ%bad", b"x")
    try:
        info = target.handler.next_rendezvous()
    except RendezvousStateError:
        return
    assert (info.rank, info.world_size) == (0, 1)


def test_wrong_redis_types_next_to_the_state_are_state_errors(request):
    target = Target("redis", request, blob=False)
    try:
        keys = target.backend.keys
        for key in (keys.alive, keys.participants, keys.wait_list):
            target.raw_redis.delete(key)
            target.raw_redis.hset(key, "x", "y")  # a HASH where rdzv keeps a ZSET
            with pytest.raises(RendezvousStateError, match="wrong type"):
                target.handler.next_rendezvous()
            target.raw_redis.delete(key)
        assert target.handler.next_rendezvous().world_size == 1
    finally:
        target.close()


@pytest.mark.parametrize("field", ["ver", "round", "world", "seq", "deadline"])
def test_garbage_in_the_membership_record_is_a_state_error(request, field):
    target = Target("redis", request, blob=False)
    try:
        target.handler.next_rendezvous()
        target.raw_redis.hset(target.backend.keys.round, field, pickle.dumps({"x": 1}))
        with pytest.raises(RendezvousStateError, match=field):
            target.handler.is_closed()
        with pytest.raises(RendezvousStateError):
            target.handler.next_rendezvous()
    finally:
        target.close()


@pytest.mark.parametrize(
    "garbage", [b"not json", b'{"inc": 7, "ver": "x"}', b'{"inc": "a", "ver": 1}', pickle.dumps({"inc": "a"})]
)
def test_garbage_in_the_etcd_membership_summary_is_a_state_error(request, garbage):
    target = Target("etcd-v3", request, blob=False)
    try:
        target.handler.next_rendezvous()
        raw_put(target.server, "v3", target.backend.membership.summary_key, garbage)
        with pytest.raises(RendezvousStateError, match="membership summary"):
            target.handler.is_closed()
        with pytest.raises(RendezvousStateError):
            target.handler.next_rendezvous()
    finally:
        target.close()


def test_garbage_members_never_crash_the_membership(request):
    """Entries rdzv did not write (not UTF-8) in the membership lists: a clear error or ignored."""
    target = Target("redis", request, blob=False)
    try:
        target.raw_redis.zadd(target.backend.keys.wait_list, {b"\xff\xfe not utf-8": 1})
        try:
            info = target.handler.next_rendezvous()
        except RendezvousStateError:
            return
        assert (info.rank, info.world_size) == (0, 1)
    finally:
        target.close()
