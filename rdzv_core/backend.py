"""The rendezvous backend contract and the optional capabilities a backend may offer.

A backend keeps one opaque state blob per run with compare-and-set by a *fencing token*
(torch's ``RendezvousBackend`` contract). The handler needs nothing more; when a backend also
implements one of the small protocols below, the handler uses it:

* :class:`ChangeNotifier` — waiting nodes block until the state changes instead of polling.
* :class:`LivenessTracker` — keep-alives go to per-node liveness records instead of
  rewriting the shared state; dead nodes are found by asking about a few nodes at a time.
* :class:`JoinQueue` — joining nodes announce themselves in a queue, and one node admits
  the whole queue with a single compare-and-set, so a burst of N joins costs O(N) small
  requests and a handful of state writes instead of O(N^2) lost compare-and-sets.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

__all__ = ["Token", "RendezvousBackend", "ChangeNotifier", "LivenessTracker", "JoinQueue"]

#: A fencing token: opaque to the handler, compared only by the backend.
Token = Any


class RendezvousBackend(ABC):
    """Stores the shared rendezvous state of one run with compare-and-set.

    The state is opaque ``bytes`` to the backend; the token identifies the stored version.
    """

    @property
    @abstractmethod
    def name(self) -> str:
        """The backend's name (``"redis"``, ``"etcd-v3"``, ...)."""

    @abstractmethod
    def get_state(self) -> tuple[bytes, Token] | None:
        """Return ``(state, token)``, or ``None`` when no state exists yet.

        Raises:
            RendezvousConnectionError: the backend cannot be reached.
            RendezvousStateError: the stored data is not a state this backend wrote.
        """

    @abstractmethod
    def set_state(self, state: bytes, token: Token | None = None) -> tuple[bytes, Token, bool] | None:
        """Compare-and-set the state.

        Args:
            state: The new state (bytes).
            token: The token of the version the caller read; ``None`` means "create, only if
                no state exists".

        Returns:
            ``(state, token, has_set)``: the stored state and token after the call, and whether
            the caller's write was applied. When the token is stale, foreign, or ``None`` while
            a state exists, nothing is written and the current state and token are returned.
            ``None`` when the state vanished in between (the caller re-reads).

        Raises:
            RendezvousConnectionError: the backend cannot be reached.
        """

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections and background threads; the default does nothing."""


@runtime_checkable
class ChangeNotifier(Protocol):
    """A backend that can block until the state changes."""

    def wait_for_change(self, token: Token | None, timeout: float) -> bool:
        """Block until the stored token differs from ``token`` (``None``: no state) or
        ``timeout`` seconds pass.

        Returns:
            ``True`` when a change was seen (a spurious ``True`` is allowed), ``False`` on
            timeout. ``timeout == 0`` only checks.
        """
        ...


@runtime_checkable
class LivenessTracker(Protocol):
    """A backend that records keep-alives per node, outside the shared state."""

    def keep_alive(self, node: str, ttl: float) -> None:
        """Record that ``node`` is alive now; the record may lapse after ``ttl`` seconds."""
        ...

    def heartbeat_ages(self, nodes: Sequence[str]) -> list[float | None]:
        """Return, per node, the seconds since its last keep-alive, or ``None`` when it has
        no (unexpired) record."""
        ...

    def forget_node(self, node: str) -> None:
        """Delete the liveness record of ``node`` (it left or was removed)."""
        ...


@runtime_checkable
class JoinQueue(Protocol):
    """A backend with a queue of nodes asking to be admitted to the rendezvous.

    The queue is a set ordered by arrival: enqueuing a node twice keeps its first place.
    """

    def enqueue_join(self, node: str) -> int:
        """Add ``node`` to the queue; return its 1-based position (1 = at the head)."""
        ...

    def pending_joins(self) -> list[str]:
        """Return the queued nodes in arrival order (the queue is not changed)."""
        ...

    def pending_join_count(self) -> int:
        """Return the number of queued nodes."""
        ...

    def ack_joins(self, nodes: Sequence[str]) -> None:
        """Remove ``nodes`` from the queue (they were admitted into the state)."""
        ...
