"""The store of a finished legacy round: torch's ``EtcdStore`` layout, rdzv's store contract.

torch's ``EtcdRendezvousHandler`` hands out an ``EtcdStore`` whose keys live under
``<prefix>/run_<id>/rdzv/v_<version>/kv/``, each key and value base64-encoded (standard
alphabet). :class:`LegacyEtcdStore` uses the same paths and values, so torch's nodes and
rdzv's read each other's keys (``MASTER_ADDR``, ``MASTER_PORT``, the agent's own): on v2 the
adapter already stores values base64-encoded; on v3 values are raw bytes (no torch node
speaks v3). Everything else (blocking ``get``/``wait`` by watches, ``add``/``compare_set``
as compare-and-set loops) is :class:`rdzv_etcd.store.EtcdStore`'s.

A key whose base64 form contains ``/`` becomes, on v2, a path inside a sub-directory, as
with torch's store (torch's own reads do not find such keys; rdzv's do).
"""

from __future__ import annotations

import base64
from datetime import timedelta

from rdzv_core.store import DEFAULT_STORE_TIMEOUT, check_key
from rdzv_etcd.client import EtcdKV
from rdzv_etcd.store import EtcdStore

__all__ = ["LegacyEtcdStore"]


class LegacyEtcdStore(EtcdStore):
    """A :class:`~rdzv_core.store.Store` at ``prefix`` (``.../rdzv/v_<version>/kv/``) in
    torch's ``EtcdStore`` layout: the etcd key of store key ``k`` is
    ``prefix + base64(k)``.

    Args:
        kv: The etcd adapter (v2 or v3) of the round's transport.
        prefix: Absolute etcd path ending with ``/``.
        timeout: Default bound of ``get``/``wait``/``multi_get`` (timedelta or seconds).

    Raises (every method):
        RendezvousConnectionError: etcd is unreachable.
        RendezvousStateError: a stored value cannot be decoded (v2: not base64).
    """

    def __init__(self, kv: EtcdKV, prefix: str, timeout: timedelta | float = DEFAULT_STORE_TIMEOUT) -> None:
        super().__init__(kv, prefix, timeout)

    def __repr__(self) -> str:
        return f"LegacyEtcdStore({self._kv.api}, {self._kv.endpoint}, prefix={self.prefix!r})"

    def _path(self, key: str) -> str:
        return self.prefix + base64.b64encode(check_key(key).encode("utf-8")).decode("ascii")
