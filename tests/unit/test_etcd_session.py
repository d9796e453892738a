"""The etcd-v3 client's HTTP session takes nothing from the environment (no per-request
netrc/proxy lookups, no HTTP(S)_PROXY for etcd traffic)."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.unit

pytest.importorskip("etcd3gw")


def test_the_session_ignores_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from rdzv_etcd.client import EtcdConfig
    from rdzv_etcd.v3 import EtcdV3KV

    monkeypatch.setenv("HTTP_PROXY", "http://proxy.invalid:3128")
    kv = EtcdV3KV(EtcdConfig.from_endpoint("127.0.0.1:2379"))
    client = kv._connect(kv.config.endpoints[0], kv.config.urls[0])
    try:
        assert client.session.trust_env is False
    finally:
        kv._disconnect(client)
