"""The state codec (no pickle, validated, versioned) and node identities."""

from __future__ import annotations

import os
import pickle
import threading

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rdzv_core import state as state_module
from rdzv_core.api import RendezvousStateError
from rdzv_core.state import (
    MAX_STATE_BYTES,
    SCHEMA_VERSION,
    NodeDesc,
    NodeDescGenerator,
    RendezvousState,
    decode_state,
    encode_state,
)

pytestmark = pytest.mark.unit

RUN = "run-1"


def sample_state() -> RendezvousState:
    return RendezvousState(
        run_id=RUN,
        round=3,
        complete=True,
        deadline=None,
        closed=False,
        participants={"a_1_0": 0, "b_2_0": 1},
        world_size=2,
        wait_list=["c_3_0"],
        redundancy_list=["d_4_0"],
        last_heartbeats={"a_1_0": 1.5, "b_2_0": 2.5},
    )


# -- codec ---------------------------------------------------------------------------------


def test_round_trip():
    state = sample_state()
    assert decode_state(encode_state(state), RUN) == state


def test_round_trip_default_state():
    state = RendezvousState(run_id=RUN)
    decoded = decode_state(encode_state(state), RUN)
    assert decoded == state
    assert decoded.version == SCHEMA_VERSION
    assert (decoded.round, decoded.complete, decoded.closed, decoded.deadline) == (0, False, False, None)


def test_encoded_state_is_not_pickle():
    data = encode_state(sample_state())
    assert not data.startswith(b"\x80")  # pickle protocol 2+ header
    with pytest.raises(Exception):  # noqa: B017 - any failure: it is not a pickle
        pickle.loads(data)


def test_state_helpers():
    state = sample_state()
    assert state.rank_of("b_2_0") == 1
    with pytest.raises(KeyError):
        state.rank_of("c_3_0")
    assert state.members() == ["a_1_0", "b_2_0", "c_3_0", "d_4_0"]


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00",
        b"\xff\xfe garbage \x00",
        os.urandom(1),
        b"\xc1",  # never-used msgpack byte
        b"not msgpack at all",
        msgspec.msgpack.encode([1, 2, 3]),
        msgspec.msgpack.encode("a string"),
        msgspec.msgpack.encode({"run_id": RUN}),  # no version
        msgspec.msgpack.encode({"version": "1", "run_id": RUN}),
        msgspec.msgpack.encode({"version": 1, "run_id": RUN, "participants": {"a": "zero"}}),
        msgspec.msgpack.encode({"version": 1, "run_id": RUN, "round": "x"}),
        msgspec.msgpack.encode({"version": 1, "run_id": RUN, "wait_list": [1]}),
        msgspec.msgpack.encode({"version": 1, "run_id": RUN, "complete": "yes"}),
        msgspec.json.encode(sample_state()),  # JSON is not our encoding
    ],
)
def test_garbage_raises_state_error(data):
    with pytest.raises(RendezvousStateError):
        decode_state(data, RUN)


@pytest.mark.parametrize("cut", [1, 2, 5, 10, 20, 40, -1])
def test_truncated_state_raises_state_error(cut):
    data = encode_state(sample_state())
    with pytest.raises(RendezvousStateError):
        decode_state(data[:cut], RUN)


def test_trailing_bytes_raise_state_error():
    with pytest.raises(RendezvousStateError):
        decode_state(encode_state(sample_state()) + b"\x00", RUN)


def test_newer_schema_version_raises_state_error():
    state = sample_state()
    state.version = SCHEMA_VERSION + 1
    with pytest.raises(RendezvousStateError, match=f"version {SCHEMA_VERSION + 1}"):
        decode_state(encode_state(state), RUN)


def test_newer_schema_with_unknown_fields_still_reports_the_version():
    data = msgspec.msgpack.encode(
        {"version": SCHEMA_VERSION + 1, "run_id": RUN, "new_field": {"x": [1]}, "round": "changed type"}
    )
    with pytest.raises(RendezvousStateError, match="upgrade"):
        decode_state(data, RUN)


def test_unknown_fields_of_the_same_version_are_ignored():
    data = msgspec.msgpack.encode({"version": SCHEMA_VERSION, "run_id": RUN, "round": 2, "extra": 1})
    assert decode_state(data, RUN).round == 2


def test_state_of_another_run_raises_state_error():
    with pytest.raises(RendezvousStateError, match="'run-1'.*'other'"):
        decode_state(encode_state(sample_state()), "other")


def test_oversized_state_is_refused_before_decoding(monkeypatch):
    def must_not_decode(*args, **kwargs):
        raise AssertionError("decoded an oversized state")

    monkeypatch.setattr(state_module, "_header_decoder", type("D", (), {"decode": must_not_decode})())
    with pytest.raises(RendezvousStateError, match="limit"):
        decode_state(b"\x00" * (MAX_STATE_BYTES + 1), RUN)


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/rdzv-pwned-by-pickle",))


def test_malicious_pickle_is_never_executed(monkeypatch):
    payloads = [pickle.dumps(_Evil(), protocol=protocol) for protocol in range(0, pickle.HIGHEST_PROTOCOL + 1)]
    calls = []
    monkeypatch.setattr(os, "system", lambda cmd: calls.append(cmd) or 0)
    for data in payloads:
        with pytest.raises(RendezvousStateError):
            decode_state(data, RUN)
    assert calls == []


def test_pickled_state_dict_is_refused():
    data = pickle.dumps({"version": 1, "run_id": RUN})
    with pytest.raises(RendezvousStateError):
        decode_state(data, RUN)


def test_error_message_does_not_dump_huge_data():
    data = b"\xc1" + b"A" * 100_000
    with pytest.raises(RendezvousStateError) as info:
        decode_state(data, RUN)
    assert len(str(info.value)) < 1000


@settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=512))
def test_fuzz_decode_raises_only_state_error(data):
    try:
        result = decode_state(data, RUN)
    except RendezvousStateError:
        return
    assert isinstance(result, RendezvousState)


_msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=8)
    | st.binary(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=6,
)


@settings(max_examples=100, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.fixed_dictionaries(
        {"version": st.integers(-3, SCHEMA_VERSION + 1), "run_id": st.sampled_from([RUN, "other", ""])},
        optional={
            name: _msgpack_values
            for name in (
                "round",
                "complete",
                "deadline",
                "closed",
                "participants",
                "world_size",
                "wait_list",
                "redundancy_list",
                "last_heartbeats",
            )
        },
    )
)
def test_fuzz_structured_maps_raise_only_state_error(doc):
    data = msgspec.msgpack.encode(doc)
    try:
        result = decode_state(data, RUN)
    except RendezvousStateError:
        return
    assert isinstance(result, RendezvousState)
    assert result.run_id == RUN


_node_keys = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=12)


@settings(max_examples=100, deadline=None, derandomize=True)
@given(
    st.builds(
        RendezvousState,
        run_id=st.just(RUN),
        round=st.integers(0, 2**31),
        complete=st.booleans(),
        deadline=st.none() | st.floats(allow_nan=False, allow_infinity=False),
        closed=st.booleans(),
        participants=st.dictionaries(_node_keys, st.integers(0, 1000), max_size=5),
        world_size=st.integers(0, 1000),
        wait_list=st.lists(_node_keys, max_size=5),
        redundancy_list=st.lists(_node_keys, max_size=5),
        last_heartbeats=st.dictionaries(_node_keys, st.floats(allow_nan=False), max_size=5),
    )
)
def test_fuzz_round_trip(state):
    assert decode_state(encode_state(state), RUN) == state


# -- node identity -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "node",
    [
        NodeDesc("host", 123, 0),
        NodeDesc("host.example.com", 1, 99),
        NodeDesc("my_host_name", 4567, 2),
        NodeDesc("a_5", 1, 2),
        NodeDesc("10.0.0.1", 99999, 12345),
        NodeDesc("fe80::1", 7, 8),
    ],
)
def test_node_desc_key_round_trip(node):
    assert NodeDesc.from_key(node.key) == node
    assert node.key == f"{node.addr}_{node.pid}_{node.local_id}"
    assert str(node) == node.key


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.text(min_size=1, max_size=20), st.integers(0, 2**22), st.integers(0, 2**20))
def test_node_desc_key_round_trip_fuzz(addr, pid, local_id):
    node = NodeDesc(addr, pid, local_id)
    assert NodeDesc.from_key(node.key) == node


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.text(max_size=20))
def test_node_desc_from_arbitrary_key_never_raises(key):
    node = NodeDesc.from_key(key)
    assert isinstance(node, NodeDesc)


@pytest.mark.parametrize(
    "key", ["plainhost", "host_abc_1", "host_1_x", "_1_2", "", "h__1", "host_\u00b2_1", "host_1_\u0663", "host_+1_2"]
)
def test_node_desc_from_foreign_key(key):
    assert NodeDesc.from_key(key) == NodeDesc(key, 0, 0)


def test_node_desc_sorts_by_fields():
    assert sorted([NodeDesc("b", 1, 0), NodeDesc("a", 2, 0), NodeDesc("a", 1, 1)]) == [
        NodeDesc("a", 1, 1),
        NodeDesc("a", 2, 0),
        NodeDesc("b", 1, 0),
    ]


def test_generator_gives_distinct_nodes_in_one_process():
    gen = NodeDescGenerator()
    nodes: list[NodeDesc] = []
    lock = threading.Lock()

    def make():
        for _ in range(50):
            node = gen.generate("127.0.0.1")
            with lock:
                nodes.append(node)

    threads = [threading.Thread(target=make) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len({n.key for n in nodes}) == 200
    assert {n.pid for n in nodes} == {os.getpid()}
    assert {n.addr for n in nodes} == {"127.0.0.1"}
    # a second generator keeps counting: identities stay unique process-wide
    other = NodeDescGenerator().generate("127.0.0.1")
    assert other.key not in {n.key for n in nodes}


def test_generator_defaults_to_fqdn(monkeypatch):
    monkeypatch.setattr(state_module.socket, "getfqdn", lambda: "box.example")
    assert NodeDescGenerator().generate().addr == "box.example"
