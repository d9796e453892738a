"""The etcd plug-ins: :data:`V2` (``etcd-v2``) and :data:`V3` (``etcd-v3``), each one
:class:`~rdzv_core.plugin.BackendPlugin`.

Entry points: ``rdzv.backends: etcd-v2 = "rdzv_etcd.plugin:V2"``, ``etcd-v3 =
"rdzv_etcd.plugin:V3"``, and ``torchrun.handlers: etcd-v3 =
"rdzv_etcd.plugin:V3.torch_handler_creator"`` (torch has an ``etcd-v2`` of its own).
Nothing is imported from etcd client libraries until a backend is created.
"""

from __future__ import annotations

import functools
from typing import Any

from rdzv_core.plugin import BackendPlugin
from rdzv_etcd.backend import Api, create_backend
from rdzv_etcd.client import ETCD_CONFIG_KEYS

__all__ = ["V2", "V3"]


def _local_server(port: int | None) -> Any:
    """A throw-away single-member etcd on 127.0.0.1 (v2 API enabled).

    Raises:
        ValueError: ``port`` is given (it picks free client and peer ports).
    """
    if port is not None:
        raise ValueError(f"A local etcd picks free client and peer ports: a fixed port is not supported (got {port}).")
    from rdzv_etcd.server import EtcdServer

    return EtcdServer()


def _plugin(name: str, api: Api, torch: bool, extra: str) -> BackendPlugin:
    return BackendPlugin(
        name, functools.partial(create_backend, api=api), ETCD_CONFIG_KEYS, extra=extra, server_kind="etcd", local_server=_local_server,
        torch=torch, secret_keys=frozenset({"password"}),
    )  # fmt: skip


#: ``etcd-v2``: etcd's v2 API (needs ``--enable-v2``); not offered to torchrun (torch's own).
V2 = _plugin("etcd-v2", "v2", torch=False, extra="rdzv[etcd-v2]")
#: ``etcd-v3``: etcd's v3 API through the JSON gateway, per-node membership keys by default.
V3 = _plugin("etcd-v3", "v3", torch=True, extra="rdzv[etcd]")
