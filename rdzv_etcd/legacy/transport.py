"""What the legacy protocol needs from etcd: :class:`LegacyTransport`, on v2 or v3.

torch's legacy rendezvous is written against etcd's v2 API: string values, per-key TTLs,
directories (whose TTL takes their whole sub-tree with them), compare-and-swap and
compare-and-delete, and watches from an etcd index. :mod:`.v2` maps that one to one (the keys
and JSON values torch writes, so both handlers share a rendezvous); :mod:`.v3` maps it onto
transactions and leases (same key paths and values, for etcd 3.6, which has no v2 API).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar, NamedTuple

if TYPE_CHECKING:
    from rdzv_etcd.client import EtcdKV

__all__ = ["LegacyTransport", "Node"]


class Node(NamedTuple):
    """A key as read or written.

    Attributes:
        key: Its absolute path (str).
        value: Its value (str; the JSON of the state, ``"0"`` for the counter, ...).
        version: v2: its ``modifiedIndex``; v3: its ``mod_revision`` (int). Every write gives
            a larger one: compare-and-swap compares it.
    """

    key: str
    value: str
    version: int


class LegacyTransport(ABC):
    """The etcd operations of the legacy protocol. Keys are absolute paths (str).

    Every method raises :class:`~rdzv_core.api.RendezvousConnectionError` (endpoint + cause)
    when etcd cannot be reached within the retry window (a write that may or may not have
    been applied: :class:`~rdzv_etcd.client.OutcomeUnknownError`). TTLs are whole seconds
    (int >= 1), ``None`` for none (v2: no TTL; v3: the run's lease, see :meth:`make_dir`).
    Thread-safe.
    """

    #: ``"v2"`` or ``"v3"``.
    api: ClassVar[str]

    @property
    @abstractmethod
    def kv(self) -> EtcdKV:
        """The project's key-value adapter of the same connection (for the store)."""

    @property
    def endpoint(self) -> str:
        """The endpoints, for messages (no password)."""
        return self.kv.endpoint

    @abstractmethod
    def read(self, key: str) -> tuple[Node | None, int]:
        """``(node or None when absent, revision)``: a watch from ``revision + 1`` sees every
        later change."""

    @abstractmethod
    def create(self, key: str, value: str, ttl: int | None = None) -> Node | None:
        """Write ``key`` only if it does not exist; ``None`` when it does (v2 ``prevExist=false``)."""

    @abstractmethod
    def compare_and_swap(self, key: str, value: str, prev: Node, ttl: int | None = None) -> Node | None:
        """Write ``key`` only if it is still ``prev`` (same version); ``None`` when it is not
        (changed, or gone). The TTL is replaced: ``None`` makes the key lasting."""

    @abstractmethod
    def put(self, key: str, value: str, ttl: int | None = None) -> Node:
        """Write ``key`` unconditionally."""

    @abstractmethod
    def compare_and_delete(self, key: str, prev: Node) -> bool:
        """Delete ``key`` only if it is still ``prev``; whether it did."""

    @abstractmethod
    def make_dir(self, key: str, ttl: int | None = None) -> None:
        """Make sure the directory ``key`` exists (idempotent; v2 ``dir=true prevExist=false``).

        v3 has no directories: without ``ttl`` nothing is written; with one (the run's
        sub-tree) ``key`` is created bound to a lease of ``ttl`` seconds (or the lease of the
        existing key is adopted), and every later write without a TTL is bound to that lease,
        so the whole run disappears with it as on v2."""

    @abstractmethod
    def refresh(self, key: str, ttl: int) -> bool:
        """Renew the TTL of ``key`` without changing it (no watch event; v2 ``refresh=true``,
        v3 a lease keep-alive); ``False`` when the key (or its lease) is gone."""

    @abstractmethod
    def existing(self, keys: Sequence[str], directory: str) -> set[str]:
        """Which of ``keys`` (all directly under ``directory``) exist."""

    @abstractmethod
    def watch(self, key: str, revision: int, timeout: float, *, recursive: bool = False) -> bool:
        """Block until ``key`` (with ``recursive``: anything under it) changes at a revision
        ``>= revision``, or ``timeout`` seconds pass; ``True`` on a change (also a possible
        one: history compacted or cleared; the caller re-reads), ``False`` on timeout."""

    def close(self) -> None:
        """Release the connections (the transport reconnects when used again)."""
        self.kv.close()
