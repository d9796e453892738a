"""Bad configuration through ``get_rendezvous_handler``, for ``redis``, ``etcd-v2`` and ``etcd-v3``.

Malformed endpoints, ports out of range, ``min_nodes > max_nodes``, negative or non-numeric
timeouts and an empty run id raise ``ValueError`` naming the key (or the endpoint) and the value
— never a ``TypeError`` from deep inside, never the password. Unknown keys are logged, by name.
"""

from __future__ import annotations

import logging
import re

import pytest

from rdzv_core.api import RendezvousParameters
from rdzv_core.registry import get_rendezvous_handler

pytestmark = pytest.mark.integration

SECRET = "c0nfig-Secr3t-91"
BACKENDS = ["redis", "etcd-v2", "etcd-v3"]


@pytest.fixture(params=BACKENDS)
def backend(request):
    """``(name, endpoint of a real server of that kind)``."""
    name = request.param
    server = request.getfixturevalue("redis_server" if name == "redis" else "etcd_server")
    return name, server.endpoint


def create(name, endpoint, run_id="cfg", min_nodes=1, max_nodes=2, **config):
    handler = get_rendezvous_handler(RendezvousParameters(name, endpoint, run_id, min_nodes, max_nodes, **config))
    handler.backend.close()  # only reached when a case wrongly passes
    return handler


def assert_names(error: BaseException, *needles: str) -> None:
    text = str(error)
    for needle in needles:
        assert needle in text, f"{needle!r} not in {text!r}"
    assert SECRET not in text and SECRET not in repr(error)


# -- what every backend shares -------------------------------------------------------------------

HANDLER_CASES = [
    ({"join_timeout": -1}, "join_timeout", "-1"),
    ({"join_timeout": "soon"}, "join_timeout", "'soon'"),
    ({"join_timeout": [5]}, "join_timeout", "[5]"),
    ({"last_call_timeout": 0}, "last_call_timeout", "0"),
    ({"close_timeout": "nan"}, "close_timeout", "'nan'"),
    ({"heartbeat_timeout": "inf"}, "heartbeat_timeout", "'inf'"),
    ({"keep_alive_interval": "-0.5"}, "keep_alive_interval", "'-0.5'"),
    ({"keep_alive_interval": "fast"}, "keep_alive_interval", "'fast'"),
    ({"keep_alive_max_attempt": 0}, "keep_alive_max_attempt", "0"),
    ({"keep_alive_max_attempt": "two"}, "keep_alive_max_attempt", "'two'"),
    ({"keep_alive_max_attempt": 1.5}, "keep_alive_max_attempt", "1.5"),
]


@pytest.mark.parametrize(("config", "key", "value"), HANDLER_CASES, ids=[f"{c[1]}={c[2]}" for c in HANDLER_CASES])
def test_bad_handler_options_name_key_and_value(backend, config, key, value):
    with pytest.raises(ValueError) as info:
        create(*backend, password=SECRET if backend[0] == "redis" else None, **config)
    assert_names(info.value, f"'{key}'", value)


@pytest.mark.parametrize(
    ("kwargs", "needles"),
    [
        ({"min_nodes": 3, "max_nodes": 2}, ("'max_nodes'", "2", "'min_nodes'", "3")),
        ({"min_nodes": 0, "max_nodes": 2}, ("'min_nodes'", "0")),
        ({"min_nodes": "1", "max_nodes": 2}, ("'min_nodes'", "'1'")),
        ({"run_id": ""}, ("'run_id'", "''")),
        ({"run_id": "   "}, ("'run_id'", "'   '")),
        ({"run_id": None}, ("'run_id'", "None")),
    ],
    ids=["min>max", "min=0", "min-str", "empty-run-id", "blank-run-id", "none-run-id"],
)
def test_bad_parameters_name_key_and_value(backend, kwargs, needles):
    with pytest.raises(ValueError) as info:
        create(*backend, **kwargs)
    assert_names(info.value, *needles)


def test_unknown_keys_are_logged_by_name_and_ignored(backend, caplog):
    caplog.set_level(logging.WARNING)
    handler = get_rendezvous_handler(
        RendezvousParameters(*backend, "cfg-unknown", 1, 1, colour="blue", jion_timeout="5", join_timeout=5)
    )
    try:
        warnings = [
            r.getMessage()
            for r in caplog.records
            if r.levelno >= logging.WARNING and "Unknown rendezvous configuration" in r.getMessage()
        ]
        assert len(warnings) == 1
        assert "colour" in warnings[0] and "jion_timeout" in warnings[0] and "'join_timeout'" not in warnings[0]
        assert "blue" not in warnings[0]  # values may be secrets: only keys are named
        assert backend[0] in warnings[0]
    finally:
        handler.backend.close()


# -- endpoints -----------------------------------------------------------------------------------

ENDPOINTS = [
    ("127.0.0.1:0", ("'127.0.0.1:0'", "65535")),
    ("127.0.0.1:65536", ("65536", "65535")),
    ("127.0.0.1:-1", ("127.0.0.1:-1",)),
    ("localhost:abc", ("localhost:abc",)),
    ("a b:1", ("a b:1",)),
    ("[::1", ("[::1",)),
    ("h:", ("h:",)),
    ("ftp://h:1", ("ftp",)),
    (f"user:{SECRET}@h:1", ("credentials",)),
]


@pytest.mark.parametrize(("endpoint", "needles"), ENDPOINTS, ids=[e[0].replace(SECRET, "SECRET") for e in ENDPOINTS])
def test_malformed_endpoints_name_the_endpoint(backend, endpoint, needles):
    with pytest.raises(ValueError) as info:
        create(backend[0], endpoint)
    assert_names(info.value, *needles)
    assert re.search("endpoint", str(info.value))


@pytest.mark.parametrize(
    ("endpoint", "needles"),
    [
        ("redis://h:99999", ("65535",)),
        ("http://h:1", ("redis",)),
        ("h1:1,h2:2", ("sentinel_master",)),
        (f"redis://u:{SECRET}@h:0/0", ("65535",)),
    ],
)
def test_malformed_redis_endpoints(endpoint, needles):
    with pytest.raises(ValueError) as info:
        create("redis", endpoint)
    assert_names(info.value, *needles)


@pytest.mark.parametrize("api", ["v2", "v3"])
@pytest.mark.parametrize("endpoint", ["redis://h:1", "http://h:1/v3", "http://a:1,https://b:2", "http://h:70000"])
def test_malformed_etcd_endpoints(api, endpoint):
    with pytest.raises(ValueError, match="'endpoint'"):
        create(f"etcd-{api}", endpoint)


# -- backend options -------------------------------------------------------------------------------

REDIS_CASES = [
    ({"socket_timeout": -1}, "socket_timeout", "-1"),
    ({"connect_timeout": "x"}, "connect_timeout", "'x'"),
    ({"retry_timeout": -1}, "retry_timeout", "-1"),
    ({"max_connections": 1}, "max_connections", "1"),
    ({"db": -1}, "db", "-1"),
    ({"db": "zero"}, "db", "'zero'"),
    ({"key_ttl": 0}, "key_ttl", "0"),
    ({"ssl": "maybe"}, "ssl", "'maybe'"),
    ({"sentinel_master": "a b"}, "sentinel_master", "'a b'"),
]


@pytest.mark.parametrize(("config", "key", "value"), REDIS_CASES, ids=[f"{c[1]}={c[2]}" for c in REDIS_CASES])
def test_bad_redis_options(redis_server, config, key, value):
    with pytest.raises(ValueError) as info:
        create("redis", redis_server.endpoint, password=SECRET, **config)
    assert_names(info.value, f"'{key}'", value)


def test_non_string_password_is_named_but_not_shown(redis_server):
    with pytest.raises(ValueError) as info:
        create("redis", redis_server.endpoint, password=12345678)
    assert_names(info.value, "'password'")
    assert "12345678" not in str(info.value)


ETCD_CASES = [
    ({"read_timeout": -1}, "read_timeout", "-1"),
    ({"read_timeout": "x"}, "read_timeout", "'x'"),
    ({"key_ttl": 0}, "key_ttl", "0"),
    ({"key_ttl": "1.5"}, "key_ttl", "'1.5'"),
    ({"protocol": "ftp"}, "protocol", "'ftp'"),
    ({"protocol": "https", "cacert": "/no/such/ca.pem"}, "cacert", "'/no/such/ca.pem'"),
]


@pytest.mark.parametrize("api", ["v2", "v3"])
@pytest.mark.parametrize(("config", "key", "value"), ETCD_CASES, ids=[f"{c[1]}={c[2]}" for c in ETCD_CASES])
def test_bad_etcd_options(etcd_server, api, config, key, value):
    with pytest.raises(ValueError) as info:
        create(f"etcd-{api}", etcd_server.endpoint, **config)
    assert_names(info.value, f"'{key}'", value)


@pytest.mark.parametrize("api", ["v2", "v3"])
def test_etcd_credentials_must_come_in_pairs(etcd_server, api):
    with pytest.raises(ValueError, match="'username'") as info:
        create(f"etcd-{api}", etcd_server.endpoint, password=SECRET)
    assert_names(info.value)
