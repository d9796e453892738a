"""The etcd v2 API adapter (python-etcd) and the ``etcd-v2`` backend factory.

etcd v2 is torch's ``etcd-v2`` backend protocol: keys are paths, values are strings (rdzv
stores bytes base64-encoded), every write gets a cluster-wide ``modifiedIndex``, and

* compare-and-set is ``PUT ?prevIndex=<version>`` (or ``?prevExist=false`` to create);
* TTLs are per key (``?ttl=<seconds>``), rewritten by every write;
* a watch is a long poll ``GET ?wait=true&waitIndex=<index>`` answered by the first event on
  the key at or after ``index`` (etcd keeps the last 1000 events; an older index is
  "cleared": :meth:`EtcdV2KV.watch` then re-reads the key and, if it is unchanged, polls
  from the current index + 1).

etcd 3.4/3.5 serve v2 only with ``--enable-v2``; etcd 3.6 removed it: prefer ``etcd-v3``.
"""

from __future__ import annotations

import base64
import binascii
import math
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from rdzv_core.api import RendezvousParameters, RendezvousStateError
from rdzv_etcd.client import EtcdConfig, EtcdKV, Failure, Versioned, WatchCursor, WatchOutcome, import_client

if TYPE_CHECKING:
    from rdzv_etcd.backend import EtcdRendezvousBackend
    from rdzv_etcd.store import EtcdStore

__all__ = ["EtcdV2KV", "create_backend"]

#: Minimum bound of a long poll: python-etcd treats a timeout of 0 as "wait forever".
_MIN_WATCH_TIMEOUT = 0.001


def _encode(value: bytes) -> str:
    return base64.b64encode(value).decode("ascii")


def _ttl_seconds(ttl: float | None) -> int | None:
    return None if ttl is None else max(1, math.ceil(ttl))


class EtcdV2KV(EtcdKV):
    """:class:`~rdzv_etcd.client.EtcdKV` on the etcd v2 HTTP API (``/v2/keys``), python-etcd.

    Versions are ``modifiedIndex`` values, revisions the ``X-Etcd-Index`` header. Values are
    base64 in etcd; a value that is not base64 raises ``RendezvousStateError``. With several
    endpoints, requests fail over between them (python-etcd's own reconnect is not used: it
    asks the cluster for its member URLs, which may not be reachable from here).

    Raises:
        ImportError: python-etcd is not installed (``pip install 'rdzv[etcd-v2]'``).
    """

    api = "v2"

    def __init__(self, config: EtcdConfig) -> None:
        super().__init__(config)
        self._etcd = import_client("etcd")
        self._urllib3 = import_client("urllib3")

    # -- EtcdKV ---------------------------------------------------------------------------

    def get(self, key: str) -> Versioned | None:
        def op(client: Any) -> Versioned | None:
            try:
                return self._versioned(key, client.read(key))
            except self._etcd.EtcdKeyNotFound:
                return None

        return self._call("get", op)

    def get_many(self, keys: Sequence[str]) -> tuple[dict[str, Versioned], int]:
        """v2 has no multi-key read: one request per key. The revision is the smallest
        ``X-Etcd-Index`` seen, so a watch from it + 1 covers every read."""

        def op(client: Any) -> tuple[dict[str, Versioned], int]:
            values: dict[str, Versioned] = {}
            indexes: list[int] = []
            for key in keys:
                try:
                    result = client.read(key)
                except self._etcd.EtcdKeyNotFound as exc:
                    indexes.append(int((exc.payload or {}).get("index", 0)))
                    continue
                values[key] = self._versioned(key, result)
                indexes.append(int(result.etcd_index))
            return values, (min(indexes) if indexes else self._current_index(client))

        return self._call("get", op)

    def put(self, key: str, value: bytes, ttl: float | None = None) -> int:
        def op(client: Any) -> int:
            return int(client.write(key, _encode(value), ttl=_ttl_seconds(ttl)).modifiedIndex)

        return self._call("put", op)

    def put_if(
        self, key: str, value: bytes, version: int | None, ttl: float | None = None
    ) -> tuple[bool, Versioned | None]:
        condition: dict[str, Any] = {"prevExist": False} if version is None else {"prevIndex": version}
        etcd = self._etcd

        def op(client: Any) -> int | None:
            try:
                return int(client.write(key, _encode(value), ttl=_ttl_seconds(ttl), **condition).modifiedIndex)
            except (etcd.EtcdCompareFailed, etcd.EtcdAlreadyExist, etcd.EtcdKeyNotFound):
                return None

        new_version = self._call("compare-and-set", op, idempotent=False)
        if new_version is not None:
            return True, Versioned(value, new_version)
        return False, self.get(key)

    def delete(self, key: str) -> bool:
        def op(client: Any) -> bool:
            try:
                client.delete(key)
                return True
            except self._etcd.EtcdKeyNotFound:
                return False

        return self._call("delete", op)  # idempotent; only the returned flag may be off

    def list_prefix(self, prefix: str) -> dict[str, Versioned]:
        """One recursive read of the directory ``prefix``."""
        return {
            key: Versioned(self._decode(key, value), version) for key, (value, version) in self._leaves(prefix).items()
        }

    def delete_prefix(self, prefix: str) -> int:
        """Count the files of the directory ``prefix`` (one recursive read), then delete it
        recursively."""
        count = len(self._leaves(prefix))

        def op(client: Any) -> None:
            try:
                client.delete(prefix.rstrip("/"), recursive=True, dir=True)
            except self._etcd.EtcdKeyNotFound:
                pass

        self._call("delete", op)
        return count

    def child_names(self, prefix: str) -> list[str]:
        """One non-recursive read of the directory ``prefix``."""

        def op(client: Any) -> list[str]:
            try:
                result = client.read(prefix.rstrip("/"))
            except self._etcd.EtcdKeyNotFound:
                return []
            # Without ``recursive`` each child directory comes back without its nodes, so it
            # is a leaf here; an empty directory yields itself (filtered out by the prefix).
            return sorted(
                {node.key[len(prefix) :].split("/", 1)[0] for node in result.leaves if node.key.startswith(prefix)}
            )

        return self._call("list", op)

    def count_prefix(self, prefix: str, max_version: int | None = None) -> int:
        """v2 cannot count on the server: one recursive read of the directory, counted here."""
        leaves = self._leaves(prefix).values()
        return sum(1 for _, version in leaves if max_version is None or version <= max_version)

    def watch(self, key: str, start_revision: int, timeout: float) -> bool:
        """Long-poll ``GET <key>?wait=true&waitIndex=<start_revision>``, bounded by ``timeout``.

        ``401 EventIndexCleared`` (etcd keeps only the last 1000 events: the key has not
        changed for longer) re-reads the key and polls from the read's ``X-Etcd-Index`` + 1
        when it is unchanged, after a back-off; so does any poll that failed. A re-read that
        shows an index below ``start_revision - 1`` means etcd lost its data: a change."""
        return self._watch_loop(
            key,
            start_revision,
            timeout,
            lambda client, cursor, deadline: self._watch_attempt(client, key, cursor, deadline),
        )

    def _watch_attempt(self, client: Any, key: str, cursor: WatchCursor, deadline: float) -> WatchOutcome:
        etcd = self._etcd
        if cursor.recheck:
            try:
                result = client.read(key)
            except etcd.EtcdKeyNotFound:
                return WatchOutcome.CHANGED
            if getattr(result, "dir", False) or int(result.modifiedIndex) >= cursor.start:
                return WatchOutcome.CHANGED
            index = int(result.etcd_index)
            if index < cursor.start - 1:
                return WatchOutcome.LOST
            cursor.start, cursor.recheck = index + 1, False
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return WatchOutcome.TIMEOUT
        cursor.recheck = True  # a poll that fails: re-read before the next
        try:
            client.read(key, wait=True, waitIndex=cursor.start, timeout=max(remaining, _MIN_WATCH_TIMEOUT))
            outcome = WatchOutcome.EVENT
        except etcd.EtcdWatchTimedOut:
            outcome = WatchOutcome.TIMEOUT
        except etcd.EtcdEventIndexCleared:
            return WatchOutcome.RESUME
        cursor.recheck = False
        return outcome

    # -- adapter plumbing -----------------------------------------------------------------

    def _connect(self, endpoint: Any, url: str) -> Any:
        config = self.config
        cert: Any = (config.cert, config.key) if config.cert and config.key else config.cert
        client = self._etcd.Client(
            host=f"[{endpoint.host}]" if ":" in endpoint.host else endpoint.host,
            port=endpoint.port,
            protocol=config.protocol,
            read_timeout=config.read_timeout,
            cert=cert,
            ca_cert=config.cacert,
            username=config.username,
            password=config.password,
            allow_reconnect=False,
        )
        # Never let urllib3 re-send a request on its own: a compare-and-set re-sent after its
        # response was lost would be reported as failed although it was applied. Retries are
        # EtcdKV._call's job, which knows which operations are idempotent. ``False`` re-raises
        # the original error, which python-etcd needs to tell a watch timeout from a failure.
        client.http.connection_pool_kw["retries"] = self._urllib3.Retry(
            total=None, connect=False, read=False, redirect=3, status=0, other=0
        )
        return client

    def _disconnect(self, client: Any) -> None:
        client.http.clear()

    def _classify(self, exc: BaseException) -> Failure | None:
        etcd = self._etcd
        if isinstance(exc, etcd.EtcdConnectionFailed):
            return _transient_of_cause(getattr(exc, "cause", None), self._urllib3)
        if isinstance(exc, (etcd.EtcdLeaderElectionInProgress, etcd.EtcdWatcherCleared)):
            return Failure.MAYBE_SENT
        if isinstance(exc, etcd.EtcdException):
            status = int((exc.payload or {}).get("status", 0) or 0)
            return Failure.MAYBE_SENT if type(exc) is etcd.EtcdException and status >= 500 else Failure.REFUSED
        return None

    def _describe(self, exc: BaseException) -> str:
        payload = getattr(exc, "payload", None) or {}
        if payload.get("message"):
            detail = f" ({payload['cause']})" if payload.get("cause") else ""
            return f"{type(exc).__name__}: {payload['message']}{detail}"
        cause = getattr(exc, "cause", None)
        cause = getattr(cause, "reason", None) or cause  # MaxRetryError wraps the real failure
        if cause is not None:
            return f"{type(cause).__name__}: {cause}"
        return f"{type(exc).__name__}: {exc}"

    def _versioned(self, key: str, result: Any) -> Versioned:
        if getattr(result, "dir", False):
            raise RendezvousStateError(f"The etcd v2 key '{key}' is a directory, not a value.")
        return Versioned(self._decode(key, result.value), int(result.modifiedIndex))

    @staticmethod
    def _decode(key: str, value: Any) -> bytes:
        try:
            return base64.b64decode(str(value), validate=True)
        except (binascii.Error, ValueError):
            raise RendezvousStateError(
                f"The etcd v2 key '{key}' holds a value that rdzv did not write (not base64)."
            ) from None

    def _leaves(self, prefix: str) -> dict[str, tuple[str, int]]:
        """``{key: (raw value, modifiedIndex)}`` of the files under the directory ``prefix``."""

        def op(client: Any) -> dict[str, tuple[str, int]]:
            try:
                result = client.read(prefix.rstrip("/"), recursive=True)
            except self._etcd.EtcdKeyNotFound:
                return {}
            return {
                node.key: (node.value, int(node.modifiedIndex))
                for node in result.leaves
                if not node.dir and node.key.startswith(prefix)
            }

        return self._call("list", op)

    def _current_index(self, client: Any) -> int:
        try:
            return int(client.read("/").etcd_index)
        except self._etcd.EtcdKeyNotFound as exc:  # pragma: no cover - the root always exists
            return int((exc.payload or {}).get("index", 0))


def _transient_of_cause(cause: Any, urllib3: Any) -> Failure:
    """A failure to connect is NOT_SENT; a TLS failure (certificate, handshake) is REFUSED
    (retrying does not fix a certificate); anything after connecting may have been applied."""
    reason = getattr(cause, "reason", cause)  # MaxRetryError wraps the real failure
    if isinstance(reason, urllib3.exceptions.SSLError) or isinstance(cause, urllib3.exceptions.SSLError):
        return Failure.REFUSED
    not_sent = (urllib3.exceptions.NewConnectionError, urllib3.exceptions.ConnectTimeoutError)
    if isinstance(reason, not_sent) or isinstance(cause, not_sent):
        return Failure.NOT_SENT
    return Failure.MAYBE_SENT


def create_backend(params: RendezvousParameters) -> tuple[EtcdRendezvousBackend, EtcdStore]:
    """Create the ``etcd-v2`` backend and the run's store (see
    :func:`rdzv_etcd.backend.create_backend`)."""
    from rdzv_etcd.backend import create_backend as create

    return create(params, api="v2")
