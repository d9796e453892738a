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
* :class:`AtomicMembership` — the server itself applies joins, leaves, keep-alives, the
  completion of a round and the dead-node sweep, each as one atomic, commutative operation
  on per-node records (Redis Lua over per-run sets). A node then never reads nor writes the
  whole state: each call answers with the node's :class:`Standing` (O(1) bytes), so a round
  of N nodes costs O(1) requests and bytes per node. The handler prefers this capability
  over all the others; :mod:`rdzv_core.rounds` is its reference implementation.
* :class:`BootstrapRecord` — with :class:`AtomicMembership`: rank 0 of a complete round
  writes its bootstrap address into the round's record, and every member's standing carries
  it, so a node learns its rank and ``MASTER_ADDR``/``MASTER_PORT`` from the same O(1)
  answer instead of a separate blocking read of the round's store.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Container, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

__all__ = [
    "Token",
    "RendezvousBackend",
    "ChangeNotifier",
    "LivenessTracker",
    "JoinQueue",
    "Role",
    "RoundSpec",
    "Standing",
    "AtomicMembership",
    "BootstrapRecord",
    "RunCatalog",
    "MAX_BOOTSTRAP_CHARS",
    "check_bootstrap",
]

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


class Role(str, enum.Enum):
    """Where a node stands in the rendezvous (:attr:`Standing.role`)."""

    #: In no list: never joined, left, declared dead, or the server lost the state.
    NONE = "none"
    #: A participant of the current round.
    PARTICIPANT = "participant"
    #: In the wait list: the round is complete and has room; the node joins the next round.
    WAITING = "waiting"
    #: In the redundancy list: the round is full (``max_nodes``); the node waits for room.
    REDUNDANT = "redundant"

    @classmethod
    def of(
        cls, node: str, participants: Container[str], wait_list: Container[str], redundancy_list: Container[str]
    ) -> Role:
        """The role of ``node`` given the three lists of a round (participants first: a node
        is in one list at a time, but a participant wins should a stale entry linger)."""
        if node in participants:
            return cls.PARTICIPANT
        if node in wait_list:
            return cls.WAITING
        if node in redundancy_list:
            return cls.REDUNDANT
        return cls.NONE


@dataclass(frozen=True)
class RoundSpec:
    """What the server needs to apply a membership operation.

    Attributes:
        min_nodes: Minimum participants of a round (int >= 1).
        max_nodes: Maximum participants of a round (int >= min_nodes).
        last_call: Seconds (float) the round stays open for more nodes once ``min_nodes``
            joined.
        dead_after: Seconds (float) a keep-alive record stays valid; a node whose record
            lapsed is removed by the next sweep.
    """

    min_nodes: int
    max_nodes: int
    last_call: float
    dead_after: float


@dataclass(frozen=True)
class Standing:
    """One node's view of the rendezvous, as the server answered it (O(1) bytes).

    Attributes:
        incarnation: Random id (str) of the run's membership record; a new one means the
            server lost the record and started over. ``""`` when no record exists.
        version: Counter (int) of the transitions a waiting node must react to: a new round,
            completion, close, the last call starting or stopping, the wait list or the set
            of missing participants becoming non-empty. Joins that change none of these do
            not bump it, so a round of N joins announces O(1) changes.
        round: The current round (int, from 0).
        complete: Whether the current round completed.
        closed: Whether the rendezvous is closed.
        role: This node's :class:`Role`.
        rank: This node's rank (int) when it is a participant of the complete round, else
            ``None``. Ranks are fixed at completion, in the sorted order of the node keys.
        world_size: The number of participants the round completed with (0 while open).
        participants: Current number of participants (int).
        waiting: Length of the wait list (int).
        redundant: Length of the redundancy list (int).
        deadline_in: Seconds (float) until the last call ends, by the server's clock, or
            ``None`` while fewer than ``min_nodes`` joined (or the round is complete).
        left_redundancy: Whether this very call moved the node out of the redundancy list
            (its join deadline starts again, as in torch).
        bootstrap: What rank 0 of the complete round published with
            :meth:`BootstrapRecord.publish_bootstrap` (str, opaque to the backend), else
            ``None`` (always ``None`` while the round is open).
    """

    incarnation: str
    version: int
    round: int
    complete: bool
    closed: bool
    role: Role
    rank: int | None
    world_size: int
    participants: int
    waiting: int
    redundant: int
    deadline_in: float | None
    left_redundancy: bool = False
    bootstrap: str | None = None

    @property
    def missing(self) -> int:
        """Participants of a complete round that were removed since it completed."""
        return max(0, self.world_size - self.participants) if self.complete else 0

    @property
    def change_id(self) -> tuple[str, int]:
        """``(incarnation, version)``: what :meth:`AtomicMembership.wait_for_round_change`
        compares."""
        return self.incarnation, self.version


@runtime_checkable
class AtomicMembership(Protocol):
    """A backend whose server applies each membership operation atomically.

    Every method is one request (a Lua script on Redis) and answers with the calling node's
    :class:`Standing`; the exact semantics are those of :mod:`rdzv_core.rounds` (the
    reference implementation, which backends mirror and a shared contract suite checks).
    All methods may raise :class:`~rdzv_core.api.RendezvousConnectionError`.
    """

    def join_round(self, node: str, spec: RoundSpec) -> Standing:
        """Record a keep-alive of ``node`` and admit it: as a participant while the round is
        open (completing it at ``max_nodes``, starting the last call at ``min_nodes``), else
        to the wait list while the round has room, else to the redundancy list. A node
        already placed keeps its place; a wait-listed node of a round that has since been
        re-opened becomes a participant; a redundant node moves on when room appeared.
        Creates the membership record (a new incarnation) when none exists."""
        ...

    def leave_round(self, node: str, spec: RoundSpec) -> Standing:
        """Remove ``node`` from every list (its keep-alive record stays). When the last
        participant of a complete round leaves, the next round opens."""
        ...

    def complete_round(self, node: str, spec: RoundSpec, round_: int) -> Standing:
        """Complete round ``round_`` when it is still the open round, holds at least
        ``min_nodes`` participants and its last call ended (idempotent)."""
        ...

    def keep_alive_round(self, node: str, spec: RoundSpec, sweep: bool) -> tuple[Standing, list[str]]:
        """Record a keep-alive of ``node``; when ``sweep``, also remove every other node whose
        keep-alive record lapsed (bounded per call) and return them."""
        ...

    def round_standing(self, node: str) -> Standing:
        """Return the standing of ``node`` (read-only)."""
        ...

    def close_rendezvous(self, node: str) -> Standing:
        """Mark the rendezvous closed (idempotent)."""
        ...

    def wait_for_round_change(self, seen: tuple[str, int] | None, timeout: float) -> bool:
        """Block until the record's :attr:`Standing.change_id` differs from ``seen`` or
        ``timeout`` seconds pass. ``True`` when a change was seen (a spurious ``True`` is
        allowed), ``False`` on timeout; ``timeout == 0`` only checks."""
        ...

    def membership_state(self) -> Any:
        """Return the whole membership as a :class:`~rdzv_core.state.RendezvousState`, or
        ``None`` without a record. O(N) bytes: for ``rdzv status``, never on a node's path."""
        ...


#: The longest bootstrap value (characters) a backend must accept.
MAX_BOOTSTRAP_CHARS = 1024


def check_bootstrap(value: str) -> str:
    """Return ``value`` when it is a non-empty str of at most :data:`MAX_BOOTSTRAP_CHARS`
    characters; else raise ``ValueError`` naming it."""
    if not isinstance(value, str) or not value or len(value) > MAX_BOOTSTRAP_CHARS:
        raise ValueError(
            f"A bootstrap value must be a non-empty str of at most {MAX_BOOTSTRAP_CHARS} characters (got {value!r:.80})."
        )
    return value


@runtime_checkable
class BootstrapRecord(Protocol):
    """An :class:`AtomicMembership` backend whose round record also holds rank 0's bootstrap
    address (one request, announced like any other change of the record).

    May raise :class:`~rdzv_core.api.RendezvousConnectionError`."""

    def publish_bootstrap(self, node: str, round_: int, value: str) -> Standing:
        """Record ``value`` (str, at most :data:`MAX_BOOTSTRAP_CHARS`) as the bootstrap of
        round ``round_`` when that round is the current one, is complete, and ``node`` holds
        rank 0 in it; the first value of a round stands (a retry is idempotent). The version
        is bumped and announced, so waiting members wake; the value is cleared when the next
        round opens. Answers ``node``'s standing (its ``bootstrap`` shows what stands).

        Raises:
            ValueError: ``value`` is empty or longer than :data:`MAX_BOOTSTRAP_CHARS`.
        """
        ...


@runtime_checkable
class RunCatalog(Protocol):
    """A backend that can list the runs on its server and delete the keys of its own run
    (``rdzv status --all``, ``rdzv reset``). Both are administrative: they may cost O(keys on
    the server) and are never on a node's path.

    May raise :class:`~rdzv_core.api.RendezvousConnectionError`."""

    def list_run_ids(self) -> list[str]:
        """Return the ids (str, sorted) of every run that has keys on the server under this
        backend's key layout (this backend's run included when it has keys)."""
        ...

    def delete_run(self) -> int:
        """Delete every key of this backend's run (state, membership, liveness records, join
        queue, store); return how many keys were deleted (int, 0 when it had none). Nodes of
        the run that are still up see their state vanish and re-join a fresh one."""
        ...
