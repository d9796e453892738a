"""Hypothesis fuzzing of everything that parses user or backend input, beyond what
``test_state.py`` (random bytes, structured maps, round trips of the state codec) and
``test_utils.py`` (hand-picked endpoints and config strings) already do:

* ``parse_rendezvous_endpoint`` / ``parse_rendezvous_config`` on arbitrary text: only
  ``ValueError``, well-formed results, round trips, the password never echoed;
* ``RendezvousParameters.get_as_*`` on values of any type;
* ``RedisConfig.from_params`` and ``EtcdConfig.from_endpoint`` (what every handler creation
  runs) on fuzzed endpoints and options: only ``ValueError``, never the password;
* ``decode_state`` on mutations (flips, cuts, splices) of valid states.
"""

from __future__ import annotations

import math
import string

import msgspec
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from rdzv_core.api import RendezvousParameters, RendezvousStateError
from rdzv_core.state import RendezvousState, decode_state, encode_state
from rdzv_core.utils import Endpoint, parse_rendezvous_config, parse_rendezvous_endpoint

pytestmark = pytest.mark.unit

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SECRET = "Zq9-s3cr3t-Xw7"

_host_chars = string.ascii_letters + string.digits + "-."
hosts = st.text(_host_chars, min_size=1, max_size=20).filter(
    lambda h: ":" not in h and not h.startswith("[")
) | st.ip_addresses(v=4).map(str)
ports = st.integers(1, 65535)
# text that looks like endpoints (their characters and pieces), plus anything
_pieces = list(_host_chars + ":/@[]%?#, \t") + [
    "redis://",
    "rediss://",
    "http://",
    "https://",
    "unix://",
    "::1",
    "65535",
    "65536",
    "0",
    "\u0661",
]
endpoint_text = st.lists(st.sampled_from(_pieces), max_size=16).map("".join) | st.text(max_size=40)


# -- parse_rendezvous_endpoint ---------------------------------------------------------------------


@FUZZ
@given(endpoint_text, st.integers(1, 65535))
@example("redis://h:0", 1)
@example("[::1]:65536", 1)
@example("h:\u0661", 1)  # an Arabic-Indic digit: int() accepts it
def test_endpoint_parser_raises_only_value_error(text, default_port):
    try:
        endpoint = parse_rendezvous_endpoint(text, default_port)
    except ValueError:
        return
    assert isinstance(endpoint, Endpoint)
    assert endpoint.host and isinstance(endpoint.host, str)
    assert isinstance(endpoint.port, int) and 1 <= endpoint.port <= 65535
    str(endpoint)  # never raises


@FUZZ
@given(hosts, ports, st.sampled_from([None, "redis", "rediss", "http", "https"]))
def test_endpoint_round_trip(host, port, scheme):
    text = f"{scheme}://{host}:{port}" if scheme else f"{host}:{port}"
    try:
        endpoint = parse_rendezvous_endpoint(text, 1)
    except ValueError:
        assume(False)  # e.g. hosts urllib does not accept; the other test covers errors
        return
    assert (endpoint.host.lower(), endpoint.port, endpoint.scheme) == (host.lower(), port, scheme)


@FUZZ
@given(
    st.sampled_from(["redis", "rediss", "http", "https", "ftp", "redis:/", "redis//", ""]),
    st.text(string.ascii_letters, max_size=6),
    st.text(_host_chars + ":[]/ @", max_size=15),
    st.text(string.digits + "-x", max_size=7),
)
def test_endpoint_errors_and_str_never_show_the_password(scheme, user, host, port):
    sep = "://" if scheme and not scheme.endswith("/") else ""
    text = f"{scheme}{sep}{user}:{SECRET}@{host}:{port}"
    try:
        endpoint = parse_rendezvous_endpoint(text, 1)
    except ValueError as exc:
        assert SECRET not in str(exc)
        return
    assert SECRET not in str(endpoint) and SECRET not in endpoint.host


# -- parse_rendezvous_config ------------------------------------------------------------------------


@FUZZ
@given(st.text(max_size=60) | st.text(st.sampled_from("ab =,\t\n"), max_size=30))
def test_config_parser_raises_only_value_error(text):
    try:
        config = parse_rendezvous_config(text)
    except ValueError:
        return
    for key, value in config.items():
        assert key and key == key.strip() and "," not in key and "=" not in key
        assert value == value.strip() and "," not in value


_keys = st.text(string.ascii_letters + "_", min_size=1, max_size=12)
_values = st.text(
    st.characters(blacklist_characters=",", blacklist_categories=("Cs",)), min_size=1, max_size=16
).filter(str.strip)


@FUZZ
@given(st.dictionaries(_keys, _values, max_size=6))
def test_config_round_trip(config):
    text = ",".join(f"{key}={value}" for key, value in config.items())
    assert parse_rendezvous_config(text) == {key: value.strip() for key, value in config.items()}


# -- RendezvousParameters getters ---------------------------------------------------------------------

any_value = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=12)
    | st.lists(st.integers(), max_size=2)
    | st.binary(max_size=4)
)


@FUZZ
@given(any_value)
def test_parameter_getters_raise_only_value_error(value):
    params = RendezvousParameters("redis", "h", "run", 1, 1, key=value)
    for getter, kind in ((params.get_as_float, float), (params.get_as_int, int), (params.get_as_bool, bool)):
        try:
            result = getter("key")
        except ValueError as exc:
            assert "'key'" in str(exc)
            continue
        assert result is None or isinstance(result, kind)
        if kind is float and result is not None:
            assert math.isfinite(result)


# -- backend configurations ---------------------------------------------------------------------------

redis_options = st.dictionaries(
    st.sampled_from(
        [
            "db",
            "username",
            "password",
            "ssl",
            "socket_timeout",
            "connect_timeout",
            "retry_timeout",
            "max_connections",
            "key_ttl",
            "sentinel_master",
            "sentinel_password",
        ]
    ),
    any_value,
    max_size=4,
)


@FUZZ
@given(endpoint_text, redis_options)
@example("redis://h/\u0661", {})  # a non-ASCII digit as the database
@example("h", {"db": "\u0661"})
@example("h", {"key_ttl": "1e309"})
def test_redis_config_raises_only_value_error_and_never_shows_the_password(endpoint, options):
    from rdzv_redis.client import RedisConfig

    options = {**options, "password": SECRET} if "password" not in options else options
    params = RendezvousParameters("redis", endpoint, "run", 1, 1, **options)
    try:
        config = RedisConfig.from_params(params)
    except ValueError as exc:
        assert SECRET not in str(exc)
        return
    assert 1 <= config.port <= 65535 and config.db >= 0
    assert config.socket_timeout > 0 and config.connect_timeout > 0 and config.retry_timeout >= 0
    assert SECRET not in repr(config) and SECRET not in config.display


etcd_options = st.dictionaries(
    st.sampled_from(["protocol", "username", "password", "read_timeout", "key_ttl", "cacert", "cert", "key"]),
    any_value,
    max_size=4,
)


@FUZZ
@given(endpoint_text, etcd_options)
def test_etcd_config_raises_only_value_error_and_never_shows_the_password(endpoint, options):
    from rdzv_etcd.client import EtcdConfig

    if "password" not in options:
        options = {**options, "username": "user", "password": SECRET}
    try:
        config = EtcdConfig.from_endpoint(endpoint, options)
    except ValueError as exc:
        assert SECRET not in str(exc)
        return
    assert config.endpoints and all(1 <= e.port <= 65535 for e in config.endpoints)
    assert config.read_timeout > 0 and config.key_ttl >= 1
    assert SECRET not in repr(config) and SECRET not in config.describe()


@pytest.mark.parametrize("key", ["read_timeout", "key_ttl"])
def test_etcd_option_given_as_none(key):
    """(Found by this fuzzing: was a bare AssertionError; fixed in rdzv_etcd.)"""
    from rdzv_etcd.client import DEFAULT_KEY_TTL, DEFAULT_READ_TIMEOUT, EtcdConfig

    config = EtcdConfig.from_endpoint("h", {key: None})
    assert (config.read_timeout, config.key_ttl) == (DEFAULT_READ_TIMEOUT, DEFAULT_KEY_TTL)


# -- the state codec on mutations of valid states -------------------------------------------------------

RUN = "fuzz-run"
_node = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=8)
valid_states = st.builds(
    RendezvousState,
    run_id=st.just(RUN),
    round=st.integers(0, 1000),
    complete=st.booleans(),
    closed=st.booleans(),
    participants=st.dictionaries(_node, st.integers(0, 64), max_size=4),
    world_size=st.integers(0, 64),
    wait_list=st.lists(_node, max_size=3),
    redundancy_list=st.lists(_node, max_size=3),
    last_heartbeats=st.dictionaries(_node, st.floats(allow_nan=False), max_size=3),
)


@st.composite
def mutated(draw):
    data = bytearray(encode_state(draw(valid_states)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "cut", "insert", "splice"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[at] ^= draw(st.integers(1, 255))
        elif op == "cut":
            del data[at : at + draw(st.integers(1, 8))]
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        else:
            data[at:at] = encode_state(draw(valid_states))[: draw(st.integers(0, 20))]
    return bytes(data)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_decode_of_mutated_states_raises_only_state_error(data):
    try:
        state = decode_state(data, RUN)
    except RendezvousStateError:
        return
    assert isinstance(state, RendezvousState) and state.run_id == RUN
    assert all(isinstance(k, str) and isinstance(v, int) for k, v in state.participants.items())
    assert all(isinstance(n, str) for n in [*state.wait_list, *state.redundancy_list])
    msgspec.msgpack.encode(state)  # whatever decoded can be written back
