"""The shared rendezvous state, node identities, and the versioned, validated state codec.

The state is encoded as MessagePack through a msgspec schema: decoding validates every field's
type, so bytes from a backend are never executed (no pickle). A state from a newer schema
version, of another run, or that does not decode raises :class:`RendezvousStateError`.
"""

from __future__ import annotations

import itertools
import os
import socket
import threading
from dataclasses import dataclass

import msgspec

from rdzv_core.api import RendezvousStateError

__all__ = [
    "SCHEMA_VERSION",
    "MAX_STATE_BYTES",
    "NodeDesc",
    "NodeDescGenerator",
    "RendezvousState",
    "encode_state",
    "decode_state",
]

#: Version of the state schema written by this release. Older readers refuse newer states.
SCHEMA_VERSION = 1
#: States larger than this are refused before decoding (a corrupt or hostile backend).
MAX_STATE_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True, order=True)
class NodeDesc:
    """Identity of a node: its address, process id, and a per-process counter.

    Several handlers in one process get distinct ``local_id`` values, so they are distinct
    nodes. :attr:`key` is the string stored in the shared state.
    """

    addr: str
    pid: int
    local_id: int

    @property
    def key(self) -> str:
        return f"{self.addr}_{self.pid}_{self.local_id}"

    @staticmethod
    def from_key(key: str) -> NodeDesc:
        """Parse a :attr:`key`; a key of another form yields ``NodeDesc(key, 0, 0)``."""
        addr, _, rest = key.rpartition("_")
        head, _, pid = addr.rpartition("_")
        if head and pid.isascii() and pid.isdigit() and rest.isascii() and rest.isdigit():  # '²'.isdigit() is True
            return NodeDesc(head, int(pid), int(rest))
        return NodeDesc(key, 0, 0)

    def __str__(self) -> str:
        return self.key


class NodeDescGenerator:
    """Generates :class:`NodeDesc` values that are unique within this process."""

    _counter = itertools.count()
    _lock = threading.Lock()

    def generate(self, local_addr: str | None = None) -> NodeDesc:
        """Return a new node identity for ``local_addr`` (default: this host's FQDN)."""
        with self._lock:
            local_id = next(self._counter)
        return NodeDesc(local_addr or socket.getfqdn(), os.getpid(), local_id)


class RendezvousState(msgspec.Struct, kw_only=True):
    """The state all nodes of a run share through the backend.

    Attributes:
        version: Schema version that wrote the state.
        run_id: Run the state belongs to (a state of another run is refused).
        round: Round number, incremented each time a round is abandoned.
        complete: Whether the round has formed (ranks assigned).
        deadline: Wall-clock time (seconds since the epoch) when the last call of an incomplete
            round with ``min_nodes`` participants ends; ``None`` before that.
        closed: Whether the rendezvous is closed for good.
        participants: Node key -> rank (ranks are 0 until the round completes; they are then
            assigned in the sorted order of the keys and never change while the round lives).
        world_size: Number of participants when the round completed (0 before).
        wait_list: Nodes waiting for the next round (it has room for them).
        redundancy_list: Nodes beyond ``max_nodes``, admitted only when room appears.
        last_heartbeats: Wall-clock keep-alive times, used only with backends that lack a
            liveness tracker.
        min_nodes, max_nodes: The node bounds of the nodes that last wrote the state (for
            ``rdzv status``; ``None`` when unknown: written by an older rdzv).
        last_call_timeout: Their last call in seconds (``None`` when unknown).
    """

    version: int = SCHEMA_VERSION
    run_id: str = ""
    round: int = 0
    complete: bool = False
    deadline: float | None = None
    closed: bool = False
    participants: dict[str, int] = msgspec.field(default_factory=dict)
    world_size: int = 0
    wait_list: list[str] = msgspec.field(default_factory=list)
    redundancy_list: list[str] = msgspec.field(default_factory=list)
    last_heartbeats: dict[str, float] = msgspec.field(default_factory=dict)
    min_nodes: int | None = None
    max_nodes: int | None = None
    last_call_timeout: float | None = None

    def rank_of(self, node: str) -> int:
        """Return the rank of ``node`` in a complete round.

        Raises:
            KeyError: the node is not a participant.
        """
        return self.participants[node]

    def members(self) -> list[str]:
        """Return every node the state knows of (participants, wait and redundancy lists)."""
        return [*self.participants, *self.wait_list, *self.redundancy_list]

    def has_member(self, node: str) -> bool:
        """Return whether ``node`` is a participant or on the wait or redundancy list."""
        return node in self.participants or node in self.wait_list or node in self.redundancy_list


class _Header(msgspec.Struct):
    """The fields read before the full decode, to report versions and runs clearly."""

    version: int
    run_id: str = ""


_encoder = msgspec.msgpack.Encoder()
_header_decoder = msgspec.msgpack.Decoder(_Header)
_state_decoder = msgspec.msgpack.Decoder(RendezvousState)
#: What msgspec raises on bad input: a str that is not UTF-8 gives a UnicodeDecodeError.
_DECODE_ERRORS = (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError)


def encode_state(state: RendezvousState) -> bytes:
    """Encode ``state`` as MessagePack bytes."""
    return _encoder.encode(state)


def decode_state(data: bytes, run_id: str) -> RendezvousState:
    """Decode and validate a state read from a backend.

    Args:
        data: The bytes stored in the backend.
        run_id: The run the caller belongs to.

    Raises:
        RendezvousStateError: ``data`` is larger than :data:`MAX_STATE_BYTES`, does not decode
            as a state, was written by a newer schema version, or belongs to another run.
    """
    if len(data) > MAX_STATE_BYTES:
        raise RendezvousStateError(
            f"The rendezvous state of run '{run_id}' is {len(data)} bytes, more than the limit of {MAX_STATE_BYTES}."
        )
    try:
        header = _header_decoder.decode(data)
    except _DECODE_ERRORS as exc:
        raise RendezvousStateError(
            f"The rendezvous state of run '{run_id}' is not a valid rdzv state ({len(data)} bytes starting {data[:16]!r}): {exc}"
        ) from None
    if header.version > SCHEMA_VERSION:
        raise RendezvousStateError(
            f"The rendezvous state of run '{run_id}' has schema version {header.version}, newer than the supported version {SCHEMA_VERSION}; upgrade rdzv on this node."
        )
    if header.run_id != run_id:
        raise RendezvousStateError(f"The rendezvous state belongs to run '{header.run_id}', not to run '{run_id}'.")
    try:
        return _state_decoder.decode(data)
    except _DECODE_ERRORS as exc:
        raise RendezvousStateError(f"The rendezvous state of run '{run_id}' is malformed: {exc}") from None
