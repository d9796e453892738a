"""The legacy protocol on etcd's v2 API (python-etcd): torch's own wire format.

Every operation is the request torch's ``EtcdRendezvous`` makes (``PUT ?prevExist=false``,
``?prevIndex=``, ``?refresh=true``, ``?dir=true``, ``DELETE ?prevIndex=``, ``GET ?wait=true``),
with values as torch writes them (plain JSON strings), so torch's and rdzv's nodes share one
rendezvous. Compare-and-swap compares the ``modifiedIndex`` where torch compares the value:
both are atomic on the same key, so they exclude each other. Requests go through the project's
:class:`~rdzv_etcd.v2.EtcdV2KV` (its retries, fail-over and error mapping); the store uses
that adapter directly (base64 values, as torch's ``EtcdStore``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from rdzv_etcd.client import EtcdConfig
from rdzv_etcd.legacy.transport import LegacyTransport, Node
from rdzv_etcd.v2 import EtcdV2KV

__all__ = ["V2Transport"]

#: python-etcd treats a watch timeout of 0 as "forever".
_MIN_WATCH_TIMEOUT = 0.001


class V2Transport(LegacyTransport):
    """:class:`~.transport.LegacyTransport` on the v2 HTTP API (``/v2/keys``).

    Raises:
        ImportError: python-etcd is not installed (``pip install 'rdzv[etcd-v2]'``).
    """

    api = "v2"

    def __init__(self, config: EtcdConfig) -> None:
        self._kv = EtcdV2KV(config)
        self._etcd = self._kv._etcd

    @property
    def kv(self) -> EtcdV2KV:
        return self._kv

    def _node(self, result: Any) -> Node:
        return Node(str(result.key), "" if result.value is None else str(result.value), int(result.modifiedIndex))

    def read(self, key: str) -> tuple[Node | None, int]:
        def op(client: Any) -> tuple[Node | None, int]:
            try:
                result = client.read(key)
            except self._etcd.EtcdKeyNotFound as exc:
                return None, int((exc.payload or {}).get("index", 0))
            return self._node(result), int(result.etcd_index)

        return self._kv._call("get", op)

    def create(self, key: str, value: str, ttl: int | None = None) -> Node | None:
        def op(client: Any) -> Node | None:
            try:
                return self._node(client.write(key, value, ttl=ttl, prevExist=False))
            except self._etcd.EtcdAlreadyExist:
                return None

        return self._kv._call("create", op, idempotent=False)

    def compare_and_swap(self, key: str, value: str, prev: Node, ttl: int | None = None) -> Node | None:
        etcd = self._etcd

        def op(client: Any) -> Node | None:
            try:
                return self._node(client.write(key, value, ttl=ttl, prevIndex=prev.version))
            except (etcd.EtcdCompareFailed, etcd.EtcdKeyNotFound):
                return None

        return self._kv._call("compare-and-swap", op, idempotent=False)

    def put(self, key: str, value: str, ttl: int | None = None) -> Node:
        return self._kv._call("put", lambda client: self._node(client.write(key, value, ttl=ttl)))

    def compare_and_delete(self, key: str, prev: Node) -> bool:
        etcd = self._etcd

        def op(client: Any) -> bool:
            try:
                client.delete(key, prevIndex=prev.version)
                return True
            except (etcd.EtcdCompareFailed, etcd.EtcdKeyNotFound):
                return False

        return self._kv._call("compare-and-delete", op, idempotent=False)

    def make_dir(self, key: str, ttl: int | None = None) -> None:
        def op(client: Any) -> None:
            try:
                client.write(key, None, ttl=ttl, dir=True, prevExist=False)
            except self._etcd.EtcdAlreadyExist:
                pass

        self._kv._call("mkdir", op)

    def refresh(self, key: str, ttl: int) -> bool:
        def op(client: Any) -> bool:
            try:
                client.refresh(key, ttl=ttl)
                return True
            except self._etcd.EtcdKeyNotFound:
                return False

        return self._kv._call("refresh", op)

    def existing(self, keys: Sequence[str], directory: str) -> set[str]:
        """One read of ``directory`` (its direct children)."""
        wanted = set(keys)

        def op(client: Any) -> set[str]:
            try:
                result = client.read(directory)
            except self._etcd.EtcdKeyNotFound:
                return set()
            return {child.key for child in result.children if child.key in wanted}  # an empty dir yields itself

        return self._kv._call("get", op)

    def watch(self, key: str, revision: int, timeout: float, *, recursive: bool = False) -> bool:
        """``GET <key>?wait=true&waitIndex=<revision>[&recursive=true]``; an index that etcd
        no longer has (``EventIndexCleared``: more than 1000 events since) counts as a change."""
        etcd = self._etcd
        deadline = time.monotonic() + timeout

        def op(client: Any) -> bool:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            try:
                client.read(
                    key, wait=True, waitIndex=revision, recursive=recursive, timeout=max(remaining, _MIN_WATCH_TIMEOUT)
                )
                return True
            except etcd.EtcdWatchTimedOut:
                return False
            except (etcd.EtcdEventIndexCleared, etcd.EtcdKeyNotFound):
                return True

        return self._kv._call("watch", op, retry_until=deadline)
