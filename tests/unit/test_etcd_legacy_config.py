"""The legacy etcd backends without a server: configuration, state decoding, the plug-in
contract's ``handler_factory``, and the torchrun bridge keeping ``timeout`` for them."""

from __future__ import annotations

import logging

import pytest

from rdzv_core.api import RendezvousParameters, RendezvousStateError
from rdzv_core.plugin import BackendPlugin
from rdzv_core.registry import get_rendezvous_handler, rendezvous_handler_registry
from rdzv_etcd.legacy import settings as legacy
from rdzv_etcd.legacy.protocol import decode_state
from rdzv_etcd.legacy.settings import LegacySettings
from rdzv_etcd.legacy.transport import Node

pytestmark = pytest.mark.unit

#: Nothing listens there: a handler that got as far as connecting would fail differently.
DEAD = "127.0.0.1:9"


def _params(backend: str = "etcd", **config: object) -> RendezvousParameters:
    return RendezvousParameters(backend, DEAD, "job", 1, 2, **config)


def test_defaults_are_torchs():
    torch_etcd = pytest.importorskip("torch.distributed.elastic.rendezvous.etcd_rendezvous")
    settings = LegacySettings.from_params(_params())
    assert settings.prefix == "/torchelastic/p2p"
    assert (settings.timeout, settings.last_call_timeout) == (
        torch_etcd._DEFAULT_TIMEOUT,
        torch_etcd._DEFAULT_LAST_CALL_TIMEOUT,
    )
    assert (settings.setup_ttl, settings.frozen_ttl, settings.joinable_ttl) == (
        torch_etcd.CONST_ETCD_SETUP_TTL,
        torch_etcd.CONST_ETCD_FROZEN_TTL,
        torch_etcd.CONST_ETCD_JOINABLE_EPHEMERAL_TTL,
    )
    assert (settings.keep_alive_ttl, settings.run_ttl) == (
        torch_etcd.CONST_WORKER_KEEPALIVE_TTL,
        torch_etcd.CONST_RUNID_SUBROOT_TTL,
    )
    assert legacy.CONST_RUNID_SUBROOT_TTL == 7200


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("timeout", 0),
        ("timeout", "soon"),
        ("last_call_timeout", -1),
        ("keep_alive_ttl", 0),
        ("run_ttl", 1.5),
        ("frozen_ttl", "x"),
        ("etcd_prefix", "relative/path"),
    ],
)
def test_bad_values_are_refused_naming_the_key(key, value):
    with pytest.raises(ValueError, match=f"'{key}'"):
        LegacySettings.from_params(_params(**{key: value}))
    with pytest.raises(ValueError, match=f"'{key}'"):  # before any connection is tried
        get_rendezvous_handler(_params(**{key: value}))


@pytest.mark.parametrize(("key", "value"), [("protocol", "ftp"), ("cacert", "/no/such/ca.pem")])
def test_bad_connection_values_are_refused_naming_the_key(key, value):
    config = {key: value, "protocol": "https"} if key == "cacert" else {key: value}
    with pytest.raises(ValueError, match=f"'{key}'"):
        get_rendezvous_handler(_params("etcd-legacy-v3", **config))


def test_decode_state():
    ok = '{"status": "final", "version": "2", "participants": [0], "keep_alives": ["k"], "num_workers_waiting": 0}'
    assert decode_state(Node("/a", ok, 1))["version"] == "2"
    assert decode_state(Node("/a", '{"status": "setup"}', 1)) == {"status": "setup"}
    for bad in ("", "{", "[]", '{"status": "joinable"}', '{"status": "final", "version": 2, "participants": []}'):
        with pytest.raises(RendezvousStateError, match="/a"):
            decode_state(Node("/a", bad, 1))


def test_the_legacy_backends_are_plugins_with_a_handler_of_their_own():
    for name, torch in (("etcd", False), ("etcd-legacy", True), ("etcd-legacy-v3", True)):
        plugin = rendezvous_handler_registry.plugin(name)
        assert isinstance(plugin, BackendPlugin) and plugin.handler_factory is not None
        assert plugin.create_backend is None and plugin.torch is torch
        assert "join_timeout" not in plugin.handler_config_keys and "timeout" in plugin.handler_config_keys
        with pytest.raises(ValueError, match="handler of its own"):
            plugin.open(_params(name))
    assert "join_timeout" in rendezvous_handler_registry.plugin("etcd-v3").handler_config_keys
    with pytest.raises(ValueError, match="create_backend or handler_factory"):
        BackendPlugin("nothing", None)


def test_unknown_keys_are_warned_about(caplog):
    plugin = rendezvous_handler_registry.plugin("etcd")
    with caplog.at_level(logging.WARNING), pytest.raises(ValueError, match="'timeout'"):
        plugin.create_handler(_params(join_timeout=5, timeout=-1))
    assert "join_timeout" in caplog.text and "'etcd'" in caplog.text


def test_torch_bridge_keeps_timeout_for_the_legacy_handler():
    pytest.importorskip("torch")
    from torch.distributed.elastic.rendezvous import RendezvousParameters as TorchParams

    from rdzv_core.torch_bridge import to_rdzv_parameters

    torch_params = TorchParams("etcd-legacy", DEAD, "job", 1, 2, timeout=900, last_call_timeout=3)
    assert "timeout" not in to_rdzv_parameters(torch_params).config
    kept = to_rdzv_parameters(torch_params, rendezvous_handler_registry.plugin("etcd-legacy").config_keys)
    assert kept.config == {"timeout": 900, "last_call_timeout": 3}
    creator = rendezvous_handler_registry.plugin("etcd-legacy").torch_handler_creator()
    with pytest.raises(ValueError, match="'timeout'"):  # it reached the legacy handler
        creator(TorchParams("etcd-legacy", DEAD, "job", 1, 2, timeout=-5))
