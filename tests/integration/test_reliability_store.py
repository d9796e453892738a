"""Bad input to the real stores (RedisStore, EtcdStore on v2 and v3), beyond the shared contract
(``tests/contracts.py`` already covers ``set(k, 123)``, ``set("", v)``, one key with separators
and a 4 MiB value): every method with non-bytes values and empty or non-str keys, many odd keys
that must not collide, values of several MB through every write path, and etcd's request-size
limit.
"""

from __future__ import annotations

import time
from datetime import timedelta

import pytest

from rdzv_core.api import RendezvousConnectionError
from rdzv_core.store import PrefixStore

pytestmark = pytest.mark.integration

MiB = 1024 * 1024


@pytest.fixture(params=["redis", "etcd-v2", "etcd-v3"])
def store(request):
    if request.param == "redis":
        store = request.getfixturevalue("redis_backend_factory")()[1]
    else:
        store = request.getfixturevalue("make_etcd")(request.param.split("-")[1])[1]
    store.set_timeout(timedelta(seconds=10))
    return store


BAD_VALUES = [None, 1.5, 7, True, [b"x"], {"a": 1}, object()]


@pytest.mark.parametrize("value", BAD_VALUES, ids=lambda v: type(v).__name__)
def test_non_bytes_values_are_type_errors_and_write_nothing(store, value):
    writes = [
        lambda: store.set("k", value),
        lambda: store.compare_set("k", b"", value),
        lambda: store.compare_set("k", value, b"x"),
        lambda: store.append("k", value),
        lambda: store.multi_set(["k", "k2"], [b"fine", value]),
    ]
    for write in writes:
        with pytest.raises(TypeError):
            write()
    assert not store.check(["k"]) and not store.check(["k2"])  # multi_set wrote nothing either
    with pytest.raises(TypeError):
        store.add("k", value if not isinstance(value, int) or isinstance(value, bool) else "1")


@pytest.mark.parametrize("key", ["", b"k", 1, None], ids=["empty", "bytes", "int", "none"])
def test_bad_keys_are_refused_by_every_method(store, key):
    error = ValueError if key == "" else TypeError
    calls = [
        lambda: store.set(key, b"v"),
        lambda: store.get(key),
        lambda: store.add(key, 1),
        lambda: store.compare_set(key, b"", b"v"),
        lambda: store.append(key, b"v"),
        lambda: store.delete_key(key),
        lambda: store.check([key]),
        lambda: store.wait([key], 0.1),
        lambda: store.multi_get(["ok", key]),
        lambda: store.multi_set(["ok", key], [b"1", b"2"]),
    ]
    for call in calls:
        start = time.monotonic()
        with pytest.raises(error):
            call()
        assert time.monotonic() - start < 2  # refused before any blocking
    assert not store.check(["ok"])


ODD_KEYS = [
    "/", "a/b", "a//b", "/a", "a/", ".", "..", "../x", "~", "~2F", "a~2Fb", "a%2Fb", "_x", ".hidden",
    "\n", "\x00", "a\x00b", "\x7f", " ", "\t", "ключ", "🔑", "*", "?", "[a]", "{run}", "rdzv:{x}:state",
    "a:b", "a\\b", "k" * 4096,
]  # fmt: skip


def test_odd_keys_round_trip_and_never_collide(store):
    base = store.num_keys()
    values = {key: f"value-{i}".encode() for i, key in enumerate(ODD_KEYS)}
    for key, value in values.items():
        store.set(key, value)
    assert store.num_keys() == base + len(ODD_KEYS)
    assert store.multi_get(list(values)) == list(values.values())
    for key, value in values.items():
        assert store.get(key) == value
        assert store.check([key])
    assert store.add("a/b-counter", 2) == 2
    prefixed = PrefixStore("p/../q~", store)
    prefixed.set("/", b"in prefix")
    assert prefixed.get("/") == b"in prefix" and store.get("/") == values["/"]
    assert store.delete_key("a/b") and not store.check(["a/b"]) and store.check(["a~2Fb", "a%2Fb"])


def test_values_of_several_megabytes_through_every_write(store, request):
    # etcd moves values as base64 in JSON (v3 gateway) or form posts (v2): slow, and v2 forms
    # are capped at 10 MB by etcd's HTTP server. Redis takes more.
    mib = 8 if "redis" in request.node.callspec.id else 3
    big = bytes(range(256)) * (mib * MiB // 256)
    store.set("big", big)
    assert store.get("big") == big
    halves = [b"\x01" * (mib * MiB // 2), b"\x02" * (mib * MiB // 2)]
    store.multi_set(["h1", "h2"], halves)
    assert store.multi_get(["h1", "h2"]) == halves
    assert store.compare_set("cs", b"", big) == big
    assert store.compare_set("cs", big, b"small") == b"small"
    store.append("grow", halves[0])
    store.append("grow", halves[1])
    assert store.get("grow") == halves[0] + halves[1]
    with pytest.raises(ValueError):
        store.add("big", 1)  # megabytes that are not an integer
    assert store.get("big") == big


def test_etcd_v2_value_beyond_its_form_limit_is_a_clear_error(make_etcd):
    """etcd's v2 HTTP API parses at most 10 MB of form data: 8 MiB (11 MB as base64) fails
    fast with a RendezvousConnectionError that says so, and nothing is written."""
    store = make_etcd("v2")[1]
    start = time.monotonic()
    with pytest.raises(RendezvousConnectionError, match="too large"):
        store.set("big", b"x" * (8 * MiB))
    assert time.monotonic() - start < 10
    assert not store.check(["big"])


def test_etcd_v3_request_size_limit_is_a_clear_error():
    """etcd's default --max-request-bytes is 1.5 MiB (v3; v2 ignores it): a larger value must
    fail fast and say so, leave nothing half-written, and the store must keep working."""
    from rdzv_etcd.backend import create_kv
    from rdzv_etcd.client import EtcdConfig
    from rdzv_etcd.server import EtcdServer
    from rdzv_etcd.store import EtcdStore

    with EtcdServer(enable_v2=True, max_request_bytes=1536 * 1024) as server:
        kv = create_kv(EtcdConfig.from_endpoint(server.endpoint, {"read_timeout": 10}), "v3")
        try:
            store = EtcdStore(kv, "/rdzv-test/limit/", timeout=5)
            start = time.monotonic()
            with pytest.raises(RendezvousConnectionError) as info:
                store.set("big", b"x" * (4 * MiB))
            assert time.monotonic() - start < 5
            assert server.endpoint in str(info.value) and "large" in str(info.value).lower()
            assert not store.check(["big"])
            store.set("small", b"fine")
            assert store.get("small") == b"fine"
        finally:
            kv.close()
