"""The legacy etcd plug-ins: torch's ``EtcdRendezvousHandler`` protocol, on v2 and on v3.

* :data:`ETCD` (``etcd``, torch's name; v2 API): wire-compatible with torch's handler.
  Not offered to torchrun under that name (torch has its own ``etcd``).
* :data:`ETCD_LEGACY` (``etcd-legacy``): the same, under a name torchrun can load from the
  ``torchrun.handlers`` group.
* :data:`ETCD_LEGACY_V3` (``etcd-legacy-v3``): the same protocol on the v3 API (etcd 3.6).

Each has a handler of its own (``handler_factory``), no dynamic-rendezvous backend.
"""

from __future__ import annotations

import functools

from rdzv_core.api import RendezvousHandler, RendezvousParameters
from rdzv_core.plugin import BackendPlugin
from rdzv_etcd.legacy.settings import LEGACY_CONFIG_KEYS
from rdzv_etcd.plugin import _local_server

__all__ = ["ETCD", "ETCD_LEGACY", "ETCD_LEGACY_V3"]


def _create(params: RendezvousParameters, api: str) -> RendezvousHandler:
    from rdzv_etcd.legacy.handler import create_handler

    if api == "v2":
        from rdzv_etcd.legacy.v2 import V2Transport

        return create_handler(params, V2Transport)
    from rdzv_etcd.legacy.v3 import V3Transport

    return create_handler(params, V3Transport)


def _plugin(name: str, api: str, torch: bool, extra: str) -> BackendPlugin:
    return BackendPlugin(
        name, None, LEGACY_CONFIG_KEYS, extra=extra, server_kind="etcd", local_server=_local_server, torch=torch,
        secret_keys=frozenset({"password"}), handler_factory=functools.partial(_create, api=api),
    )  # fmt: skip


#: ``etcd``: torch's legacy protocol on the v2 API (needs ``--enable-v2``).
ETCD = _plugin("etcd", "v2", torch=False, extra="rdzv[etcd-v2]")
#: ``etcd-legacy``: :data:`ETCD` under a name that torchrun can load.
ETCD_LEGACY = _plugin("etcd-legacy", "v2", torch=True, extra="rdzv[etcd-v2]")
#: ``etcd-legacy-v3``: the legacy protocol on the v3 API.
ETCD_LEGACY_V3 = _plugin("etcd-legacy-v3", "v3", torch=True, extra="rdzv[etcd]")
