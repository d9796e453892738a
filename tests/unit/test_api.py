"""RendezvousParameters validation and typed getters; RendezvousStoreInfo.build; the exceptions."""

from __future__ import annotations

import threading
import time

import pytest

from rdzv_core import api
from rdzv_core.api import (
    RendezvousClosedError,
    RendezvousConnectionError,
    RendezvousError,
    RendezvousGracefulExitError,
    RendezvousInfo,
    RendezvousParameters,
    RendezvousStateError,
    RendezvousStoreInfo,
    RendezvousTimeoutError,
)
from rdzv_core.store import HashStore, PrefixStore, StoreTimeoutError

pytestmark = pytest.mark.unit


def params(**config):
    return RendezvousParameters("memory", "", "run", 1, 2, **config)


# -- validation ----------------------------------------------------------------------------


def test_valid_parameters_keep_their_values():
    p = RendezvousParameters("redis", "h:1", "job", 2, 4, local_addr="10.0.0.1", join_timeout="5")
    assert (p.backend, p.endpoint, p.run_id, p.min_nodes, p.max_nodes) == ("redis", "h:1", "job", 2, 4)
    assert p.local_addr == "10.0.0.1"
    assert p.config == {"join_timeout": "5"}


def test_min_equal_max_is_valid():
    p = RendezvousParameters("memory", "", "job", 3, 3)
    assert p.min_nodes == p.max_nodes == 3


@pytest.mark.parametrize("backend", ["", "   ", None])
def test_empty_backend_raises(backend):
    with pytest.raises(ValueError, match="backend") as info:
        RendezvousParameters(backend, "", "run", 1, 1)
    assert repr(backend) in str(info.value)


@pytest.mark.parametrize("run_id", ["", "  ", None])
def test_empty_run_id_raises(run_id):
    with pytest.raises(ValueError, match="run_id") as info:
        RendezvousParameters("memory", "", run_id, 1, 1)
    assert repr(run_id) in str(info.value)


@pytest.mark.parametrize("min_nodes", [0, -1, -100])
def test_min_nodes_below_one_raises(min_nodes):
    with pytest.raises(ValueError, match="min_nodes") as info:
        RendezvousParameters("memory", "", "run", min_nodes, 4)
    assert f"got {min_nodes}" in str(info.value)


@pytest.mark.parametrize("bad", [1.5, "2", True])
def test_min_nodes_must_be_int(bad):
    with pytest.raises(ValueError, match="min_nodes"):
        RendezvousParameters("memory", "", "run", bad, 4)


def test_max_nodes_below_min_nodes_raises_with_both_values():
    with pytest.raises(ValueError, match="max_nodes") as info:
        RendezvousParameters("memory", "", "run", 5, 3)
    message = str(info.value)
    assert "got 3" in message and "got 5" in message


@pytest.mark.parametrize("bad", [2.0, "4", False])
def test_max_nodes_must_be_int(bad):
    with pytest.raises(ValueError, match="max_nodes"):
        RendezvousParameters("memory", "", "run", 1, bad)


def test_repr_hides_config_values():
    p = params(password="s3cret-pw", join_timeout=5)
    text = repr(p)
    assert "s3cret-pw" not in text
    assert "password" in text and "join_timeout" in text


# -- typed getters -------------------------------------------------------------------------


def test_get_returns_value_or_default():
    p = params(a="x")
    assert p.get("a") == "x"
    assert p.get("missing") is None
    assert p.get("missing", 7) == 7


@pytest.mark.parametrize("value", ["1", "true", "True", " TRUE ", "t", "yes", "Y", "on", 1, True])
def test_get_as_bool_true(value):
    assert params(flag=value).get_as_bool("flag") is True


@pytest.mark.parametrize("value", ["0", "false", "FALSE", "f", "no", "N", "off", 0, False])
def test_get_as_bool_false(value):
    assert params(flag=value).get_as_bool("flag") is False


def test_get_as_bool_default_and_missing():
    assert params().get_as_bool("flag") is None
    assert params().get_as_bool("flag", True) is True
    assert params().get_as_bool("flag", False) is False


@pytest.mark.parametrize("value", ["maybe", "2", 2, -1, 1.0, "", [], "tru"])
def test_get_as_bool_bad_value_names_the_key(value):
    with pytest.raises(ValueError, match="'flag'"):
        params(flag=value).get_as_bool("flag")


@pytest.mark.parametrize(("value", "expected"), [("3", 3), (" 42 ", 42), ("-1", -1), (7, 7), (2.0, 2)])
def test_get_as_int(value, expected):
    assert params(n=value).get_as_int("n") == expected


def test_get_as_int_default_and_missing():
    assert params().get_as_int("n") is None
    assert params().get_as_int("n", 5) == 5


@pytest.mark.parametrize("value", ["abc", "1.5", 1.5, "", True, object(), [1]])
def test_get_as_int_bad_value_names_the_key(value):
    with pytest.raises(ValueError, match="'count'"):
        params(count=value).get_as_int("count")


@pytest.mark.parametrize(("value", "expected"), [("1.5", 1.5), ("2", 2.0), (3, 3.0), (0.25, 0.25), (" 1e-3 ", 0.001)])
def test_get_as_float(value, expected):
    assert params(t=value).get_as_float("t") == pytest.approx(expected)


def test_get_as_float_default_and_missing():
    assert params().get_as_float("t") is None
    assert params().get_as_float("t", 2.5) == 2.5


@pytest.mark.parametrize("value", ["abc", "", "nan", "inf", "-inf", float("nan"), True, [1.0]])
def test_get_as_float_bad_value_names_the_key(value):
    with pytest.raises(ValueError, match="'timeout'"):
        params(timeout=value).get_as_float("timeout")


def test_get_as_float_minimum():
    assert params(t="1").get_as_float("t", minimum=1) == 1.0
    with pytest.raises(ValueError, match="'t'.*>= 1"):
        params(t="0.5").get_as_float("t", minimum=1)


# -- exceptions ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cls",
    [
        RendezvousClosedError,
        RendezvousTimeoutError,
        RendezvousConnectionError,
        RendezvousStateError,
        RendezvousGracefulExitError,
    ],
)
def test_every_error_is_a_rendezvous_error(cls):
    assert issubclass(cls, RendezvousError)


def test_store_timeout_is_a_rendezvous_timeout():
    assert issubclass(StoreTimeoutError, RendezvousTimeoutError)


# -- RendezvousStoreInfo / RendezvousInfo ----------------------------------------------------


def test_store_info_build_rank0_publishes_and_others_read():
    store = PrefixStore("round0", HashStore(timeout=5))
    info0 = RendezvousStoreInfo.build(0, store, "10.1.2.3", server_port=29500)
    assert info0 == RendezvousStoreInfo("10.1.2.3", 29500)
    assert store.get(RendezvousStoreInfo.MASTER_ADDR_KEY) == b"10.1.2.3"
    assert store.get(RendezvousStoreInfo.MASTER_PORT_KEY) == b"29500"
    info1 = RendezvousStoreInfo.build(1, store, "10.9.9.9")
    assert info1 == info0


def test_store_info_build_other_ranks_block_until_rank0():
    store = HashStore(timeout=10)
    results = {}

    def rank(r):
        results[r] = RendezvousStoreInfo.build(r, store, f"host{r}", server_port=1234)

    threads = [threading.Thread(target=rank, args=(r,)) for r in (1, 2, 3)]
    for t in threads:
        t.start()
    rank(0)
    for t in threads:
        t.join(10)
        assert not t.is_alive()
    assert {r: (i.master_addr, i.master_port) for r, i in results.items()} == {r: ("host0", 1234) for r in range(4)}


def test_store_info_build_defaults_to_fqdn_and_a_free_port(monkeypatch):
    monkeypatch.setattr(api.socket, "getfqdn", lambda: "node.example")
    info = RendezvousStoreInfo.build(0, HashStore(timeout=5), None)
    assert info.master_addr == "node.example"
    assert 0 < info.master_port < 65536


def test_store_info_build_times_out_when_rank0_never_publishes():
    with pytest.raises(RendezvousTimeoutError):
        RendezvousStoreInfo.build(1, HashStore(timeout=0.1), "h")


def test_store_info_build_timeout_argument_bounds_the_wait():
    started = time.monotonic()
    with pytest.raises(RendezvousTimeoutError):
        RendezvousStoreInfo.build(1, HashStore(timeout=60), "h", timeout=0.1)
    assert time.monotonic() - started < 30


class _CountingStore(HashStore):
    def __init__(self) -> None:
        super().__init__(timeout=5)
        self.calls: list[str] = []

    def __getattribute__(self, name):
        if name in ("set", "get", "multi_set", "multi_get", "wait"):
            object.__getattribute__(self, "calls").append(name)
        return object.__getattribute__(self, name)


def test_store_info_build_is_one_store_request_per_rank():
    """Rank 0 writes both keys at once and keeps them; the others read both at once."""
    store = _CountingStore()
    RendezvousStoreInfo.build(0, store, "h0", server_port=7)
    assert store.calls[0] == "multi_set" and "get" not in store.calls  # (HashStore's multi_set sets each key)
    store.calls.clear()
    assert RendezvousStoreInfo.build(1, store, "h1") == RendezvousStoreInfo("h0", 7)
    assert store.calls[0] == "multi_get" and "get" not in store.calls


def test_rendezvous_info_properties():
    store = HashStore()
    bootstrap = RendezvousStoreInfo("a", 1)
    info = RendezvousInfo(store, 2, 3, bootstrap)
    assert info.store is store
    assert (info.rank, info.world_size, info.bootstrap_store_info) == (2, 3, bootstrap)
    assert "rank=2" in repr(info) and "world_size=3" in repr(info)
