"""The legacy protocol on etcd's v3 API (etcd3gw, through the JSON gateway), for etcd 3.6.

Same key paths and JSON values as torch's v2 layout; what v2 does with its own features is
done with transactions and leases:

* compare-and-swap / -delete: a transaction comparing the key's ``mod_revision``
  (``create_revision == 0`` to create);
* a TTL: a lease of exactly that many seconds, granted for the write (one key per lease, so
  a write without TTL can drop it, as on v2); ``refresh`` is a keep-alive of the key's lease,
  which like v2's ``refresh=true`` wakes no watcher;
* directories do not exist; the run's sub-tree TTL (v2: a directory with a TTL, renewed by
  every node) is the lease of the key ``.../run_<id>``, and every write without a TTL of its
  own (the counter, a final state, the store's keys) is bound to it: when the last node stops
  renewing it, the whole run goes, as on v2;
* a recursive watch is a watch of the key prefix ``<dir>/``.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from rdzv_etcd.client import EtcdConfig, WatchOutcome
from rdzv_etcd.legacy.transport import LegacyTransport, Node
from rdzv_etcd.v3 import EtcdV3KV, _b64, _prefix_end

__all__ = ["V3Transport"]


class _LegacyV3KV(EtcdV3KV):
    """:class:`~rdzv_etcd.v3.EtcdV3KV` whose TTLs are exact leases of their own, and whose
    writes without TTL are bound to the run's lease (once :attr:`run_lease` is set)."""

    def __init__(self, config: EtcdConfig) -> None:
        super().__init__(config)
        self._run_lease: int | None = None
        self._run_lock = threading.Lock()

    @property
    def run_lease(self) -> int | None:
        """The lease of the run's sub-tree (int id), or ``None`` before :meth:`V3Transport.make_dir`."""
        with self._run_lock:
            return self._run_lease

    @run_lease.setter
    def run_lease(self, lease: int | None) -> None:
        with self._run_lock:
            self._run_lease = lease

    def _with_lease(
        self, client: Any, ttl: float | None, send: Callable[[dict[str, str]], dict[str, Any]]
    ) -> dict[str, Any]:
        if ttl is not None:
            return send({"lease": str(self._grant(client, max(1, math.ceil(ttl))))})
        lease = self.run_lease
        if lease is None:
            return send({})
        try:
            return send({"lease": str(lease)})
        except self._exceptions.Etcd3Exception as exc:
            if "lease not found" not in (exc.detail_text or ""):
                raise
            self.run_lease = None  # the run's sub-tree expired: write lasting keys, as v2 would
            return send({})

    def put_many(self, items: Sequence[tuple[str, bytes]]) -> None:
        """One ``put`` per key, each bound to the run's lease."""
        for key, value in items:
            self.put(key, value)


class V3Transport(LegacyTransport):
    """:class:`~.transport.LegacyTransport` on the v3 API (JSON gateway, etcd >= 3.4).

    Raises:
        ImportError: etcd3gw is not installed (``pip install 'rdzv[etcd]'``).
    """

    api = "v3"

    def __init__(self, config: EtcdConfig) -> None:
        self._kv = _LegacyV3KV(config)

    @property
    def kv(self) -> _LegacyV3KV:
        return self._kv

    def read(self, key: str) -> tuple[Node | None, int]:
        values, revision = self._kv.get_many([key])
        item = values.get(key)
        return (None if item is None else Node(key, item.value.decode("utf-8"), item.version)), revision

    def create(self, key: str, value: str, ttl: int | None = None) -> Node | None:
        applied, stored = self._kv.put_if(key, value.encode("utf-8"), None, ttl)
        return Node(key, value, stored.version) if applied and stored is not None else None

    def compare_and_swap(self, key: str, value: str, prev: Node, ttl: int | None = None) -> Node | None:
        applied, stored = self._kv.put_if(key, value.encode("utf-8"), prev.version, ttl)
        return Node(key, value, stored.version) if applied and stored is not None else None

    def put(self, key: str, value: str, ttl: int | None = None) -> Node:
        return Node(key, value, self._kv.put(key, value.encode("utf-8"), ttl))

    def compare_and_delete(self, key: str, prev: Node) -> bool:
        txn = {
            "compare": [{"key": _b64(key), "target": "MOD", "result": "EQUAL", "mod_revision": str(prev.version)}],
            "success": [{"request_delete_range": {"key": _b64(key)}}],
        }
        kv = self._kv
        return kv._call("compare-and-delete", lambda client: bool(kv._post(client, "kv/txn", txn).get("succeeded")))

    def make_dir(self, key: str, ttl: int | None = None) -> None:
        """Without ``ttl``: nothing (v3 has no directories). With it: adopt the lease of
        ``key``, or create ``key`` (empty) on a new lease of ``ttl`` seconds."""
        if ttl is None:
            return
        kv = self._kv

        def op(client: Any) -> int:
            lease = self._lease_of(client, key)
            if lease is not None:
                return lease
            granted = kv._grant(client, ttl)
            txn = {
                "compare": [{"key": _b64(key), "target": "CREATE", "result": "EQUAL", "create_revision": "0"}],
                "success": [{"request_put": {"key": _b64(key), "value": "", "lease": str(granted)}}],
            }
            if kv._post(client, "kv/txn", txn).get("succeeded"):
                return granted
            kv._post(client, "lease/revoke", {"ID": str(granted)})  # another node was first
            return self._lease_of(client, key) or 0

        kv.run_lease = kv._call("mkdir", op) or None

    def refresh(self, key: str, ttl: int) -> bool:
        """A keep-alive of the lease of ``key`` (``ttl`` is the lease's own)."""
        kv = self._kv

        def op(client: Any) -> bool:
            lease = self._lease_of(client, key)
            if lease is None:
                return False
            if lease == 0:
                return True
            answer = kv._post(client, "lease/keepalive", {"ID": str(lease)})
            return int((answer.get("result") or {}).get("TTL", 0) or 0) > 0

        return kv._call("refresh", op)

    def existing(self, keys: Sequence[str], directory: str) -> set[str]:
        """One transaction reading ``keys``."""
        return set(self._kv.get_many(list(keys))[0]) if keys else set()

    def watch(self, key: str, revision: int, timeout: float, *, recursive: bool = False) -> bool:
        """``POST /v3/watch`` of ``key`` (``recursive``: of the prefix ``key/``) from ``revision``."""
        kv = self._kv
        deadline = time.monotonic() + timeout
        create: dict[str, str] = {"key": _b64(key + "/" if recursive else key), "start_revision": str(max(1, revision))}
        if recursive:
            create["range_end"] = _b64(_prefix_end(key + "/"))

        def op(client: Any) -> bool:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            kv._ensure_token(client)
            outcome = kv._watch_stream(client, {"create_request": create}, remaining, revision, kv._cluster_epoch)
            return outcome is not WatchOutcome.TIMEOUT

        return kv._call("watch", op, retry_until=deadline)

    def _lease_of(self, client: Any, key: str) -> int | None:
        """The lease id of ``key`` (0: none), or ``None`` when the key does not exist."""
        kvs = self._kv._post(client, "kv/range", {"key": _b64(key)}).get("kvs") or []
        return int(kvs[0].get("lease", 0) or 0) if kvs else None
