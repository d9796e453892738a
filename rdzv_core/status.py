"""Read-only views of a rendezvous: open a backend without joining, and describe its state.

``rdzv status`` and ``rdzv close`` build on these. Nothing here joins a rendezvous: the state
is the membership record of a backend with :class:`~rdzv_core.backend.AtomicMembership`, else
the blob read through ``RendezvousBackend.get_state`` and decoded with
:func:`rdzv_core.state.decode_state` (:func:`read_state`); heartbeat ages come from the backend's
:class:`~rdzv_core.backend.LivenessTracker` when it has one, else from the keep-alive times
kept in the state.

Backends are found through the registry (entry points ``rdzv.backends``). A
:class:`~rdzv_core.plugin.BackendPlugin` is opened with its ``create_backend``; a backend
registered as a bare handler creator gets a handler (never joined) whose ``backend`` is read
(no store then).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from rdzv_core.api import RendezvousParameters, RendezvousStateError
from rdzv_core.backend import AtomicMembership, LivenessTracker, RendezvousBackend, RunCatalog
from rdzv_core.dynamic.handler import handler_options
from rdzv_core.registry import get_rendezvous_handler, rendezvous_handler_registry
from rdzv_core.state import NodeDesc, RendezvousState, decode_state
from rdzv_core.store import Store

__all__ = [
    "BackendSession",
    "NodeStatus",
    "RendezvousStatus",
    "open_backend",
    "read_status",
    "collect_status",
    "collect_all_status",
    "reset_run",
    "ResetRefused",
    "format_status_table",
    "format_runs_table",
    "safe_endpoint",
]


def safe_endpoint(endpoint: str | None) -> str:
    """Return ``endpoint`` without user name or password (for output and logs).

    ``redis://user:secret@host:6379/0`` becomes ``redis://host:6379/0``; ``host:port`` forms
    are returned unchanged. Never raises.
    """
    text = (endpoint or "").strip()
    if "://" not in text or "@" not in text:
        return text
    try:
        parts = urlsplit(text)
        netloc = parts.netloc.rpartition("@")[2]
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    except ValueError:
        return "<endpoint hidden>"


@dataclass
class BackendSession:
    """A backend (and, when the plug-in offers one, the run's store) opened without joining.

    Attributes:
        backend: The :class:`~rdzv_core.backend.RendezvousBackend` of the run.
        store: The run's :class:`~rdzv_core.store.Store` (unscoped: not per round), or
            ``None`` when the plug-in has no ``create_backend``.
        handler: The handler created to reach the backend (never joined), or ``None``.

    Use as a context manager; :meth:`close` releases connections (idempotent).
    """

    backend: RendezvousBackend
    store: Store | None = None
    handler: Any = None
    _closers: list[Callable[[], None]] = field(default_factory=list, repr=False)

    def close(self) -> None:
        """Release the backend's and the store's connections (never raises)."""
        closers, self._closers = self._closers, []
        for closer in closers:
            try:
                closer()
            except Exception:  # best effort
                pass

    def __enter__(self) -> BackendSession:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def open_backend(params: RendezvousParameters) -> BackendSession:
    """Open the backend of ``params`` without joining the rendezvous.

    Args:
        params: Backend name, endpoint, run id and configuration (node bounds are ignored).

    Returns:
        A :class:`BackendSession`; close it when done.

    Raises:
        ValueError: unknown backend (the message says what to install) or bad configuration.
        ImportError: the plug-in is installed but cannot load (e.g. redis-py missing).
        RendezvousConnectionError: the backend is unreachable.
    """
    plugin = rendezvous_handler_registry.plugin(params.backend)
    if plugin is not None:
        handler_options(params)  # refuse what a handler refuses (create_handler checks its own)
        backend, store = plugin.open(params)
        return BackendSession(backend, store, None, [store.close, backend.close])
    handler = get_rendezvous_handler(params)
    exposed = getattr(handler, "backend", None)
    if not isinstance(exposed, RendezvousBackend):
        raise ValueError(
            f"The rendezvous backend '{params.backend}' does not expose its state (its handler has no 'backend'); status and close need a dynamic-rendezvous backend."
        )
    return BackendSession(exposed, None, handler, [exposed.close])


@dataclass
class NodeStatus:
    """One node known to the rendezvous.

    Attributes:
        node: The node key (``addr_pid_localid``).
        role: ``"participant"``, ``"waiting"`` (wait list) or ``"redundant"`` (redundancy list).
        rank: The rank in a complete round, else ``None``.
        addr: The node's advertised address.
        pid: The agent's process id (``None`` when the key has another form).
        heartbeat_age: Seconds since its last keep-alive, or ``None`` when there is no record
            (not yet started, or expired: the node is about to be removed).
    """

    node: str
    role: str
    rank: int | None
    addr: str
    pid: int | None
    heartbeat_age: float | None


@dataclass
class RendezvousStatus:
    """A snapshot of one rendezvous, as ``rdzv status`` shows it.

    Attributes:
        run_id, backend: What was asked for.
        endpoint: The endpoint, without credentials.
        exists: Whether the backend holds a state for the run (all other fields are defaults
            when not).
        round: The round number.
        complete: Whether the round has formed (ranks assigned).
        closed: Whether the rendezvous is closed.
        world_size: Participants when the round completed (0 before).
        last_call_in: Seconds until the last call of an incomplete round ends (may be
            negative when overdue), or ``None``.
        last_call_at: When it ends (wall-clock seconds since the epoch), or ``None``.
        min_nodes, max_nodes: The node bounds of the nodes that last wrote the record, or
            ``None`` when unknown (a record written by an older rdzv).
        last_call_timeout: Their last call (seconds), or ``None`` when unknown.
        needed: Participants still needed before the last call starts (an incomplete,
            open round with known bounds), else ``None``.
        participants, wait_list, redundancy_list: The nodes, participants sorted by rank.
        error: Why the state could not be read (``rdzv status --all`` reports a corrupt run
            in its line instead of failing), else ``None``.
        read_at: Wall-clock time of the read (seconds since the epoch).
    """

    run_id: str
    backend: str
    endpoint: str
    exists: bool = False
    round: int = 0
    complete: bool = False
    closed: bool = False
    world_size: int = 0
    last_call_in: float | None = None
    last_call_at: float | None = None
    min_nodes: int | None = None
    max_nodes: int | None = None
    last_call_timeout: float | None = None
    needed: int | None = None
    participants: list[NodeStatus] = field(default_factory=list)
    wait_list: list[NodeStatus] = field(default_factory=list)
    redundancy_list: list[NodeStatus] = field(default_factory=list)
    error: str | None = None
    read_at: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict (the ``rdzv status --json`` document)."""
        return asdict(self)


def _heartbeat_ages(backend: RendezvousBackend, state: RendezvousState, nodes: Sequence[str]) -> list[float | None]:
    if isinstance(backend, LivenessTracker):
        return list(backend.heartbeat_ages(list(nodes)))
    now = time.time()
    return [max(0.0, now - state.last_heartbeats[n]) if n in state.last_heartbeats else None for n in nodes]


def read_state(backend: RendezvousBackend, run_id: str) -> RendezvousState | None:
    """The whole state of run ``run_id``, or ``None`` when it has none.

    With :class:`~rdzv_core.backend.AtomicMembership` the membership record is read
    (``membership_state``: what handlers join through); otherwise the state blob
    (``get_state``, decoded with the schema).

    Raises:
        RendezvousConnectionError: the backend is unreachable.
        RendezvousStateError: the stored state is corrupt or of another run.
    """
    if isinstance(backend, AtomicMembership):
        state: RendezvousState | None = backend.membership_state()
        return state
    current = backend.get_state()
    return None if current is None else decode_state(current[0], run_id)


def read_status(
    backend: RendezvousBackend, run_id: str, *, backend_name: str | None = None, endpoint: str = ""
) -> RendezvousStatus:
    """Read and describe the rendezvous state of ``run_id`` from ``backend`` (read-only).

    Args:
        backend: An open backend of the run.
        run_id: The run id (the state of another run is refused).
        backend_name: Name to report (default ``backend.name``).
        endpoint: Endpoint to report; credentials are removed.

    Returns:
        A :class:`RendezvousStatus` (``exists=False`` when the run has no state).

    Raises:
        RendezvousConnectionError: the backend is unreachable.
        RendezvousStateError: the stored state is corrupt or of another run.
    """
    status = RendezvousStatus(run_id=run_id, backend=backend_name or backend.name, endpoint=safe_endpoint(endpoint))
    state = read_state(backend, run_id)
    if state is None:
        return status
    status.exists = True
    status.round = state.round
    status.complete = state.complete
    status.closed = state.closed
    status.world_size = state.world_size
    if state.deadline is not None:
        status.last_call_at = state.deadline
        status.last_call_in = round(state.deadline - time.time(), 3)
    status.min_nodes, status.max_nodes, status.last_call_timeout = (
        state.min_nodes,
        state.max_nodes,
        state.last_call_timeout,
    )
    if state.min_nodes is not None and not (state.complete or state.closed):
        status.needed = max(0, state.min_nodes - len(state.participants))
    participants = sorted(state.participants, key=lambda n: (state.participants[n], n))
    everyone = [*participants, *state.wait_list, *state.redundancy_list]
    ages = _heartbeat_ages(backend, state, everyone) if everyone else []
    age_of = dict(zip(everyone, ages, strict=True))

    def describe(node: str, role: str) -> NodeStatus:
        desc = NodeDesc.from_key(node)
        rank = state.participants[node] if role == "participant" and state.complete else None
        age = age_of.get(node)
        return NodeStatus(node, role, rank, desc.addr, desc.pid or None, None if age is None else round(age, 3))

    status.participants = [describe(n, "participant") for n in participants]
    status.wait_list = [describe(n, "waiting") for n in state.wait_list]
    status.redundancy_list = [describe(n, "redundant") for n in state.redundancy_list]
    return status


def collect_status(params: RendezvousParameters) -> RendezvousStatus:
    """Open the backend of ``params``, read the status of ``params.run_id`` and close it.

    Raises:
        ValueError, ImportError: unknown backend or bad configuration (see :func:`open_backend`).
        RendezvousConnectionError: the backend is unreachable.
        RendezvousStateError: the stored state is corrupt.
    """
    with open_backend(params) as session:
        return read_status(session.backend, params.run_id, backend_name=params.backend, endpoint=params.endpoint)


def _catalog(session: BackendSession, backend_name: str) -> RunCatalog:
    if not isinstance(session.backend, RunCatalog):
        raise ValueError(f"The rendezvous backend '{backend_name}' cannot list or delete runs (it has no RunCatalog).")
    return session.backend


def collect_all_status(params: RendezvousParameters) -> list[RendezvousStatus]:
    """The status of every run on the server of ``params`` (``rdzv status --all``).

    ``params.run_id`` only opens the backend; the runs are those of
    :meth:`~rdzv_core.backend.RunCatalog.list_run_ids`, read one after the other (a run
    whose keys vanish between the listing and its read is reported with ``exists=False``, a
    run whose state is corrupt with its ``error``).

    Raises:
        ValueError: the backend cannot list runs, or bad configuration.
        RendezvousConnectionError: the backend is unreachable.
    """
    with open_backend(params) as session:
        run_ids = _catalog(session, params.backend).list_run_ids()
    return [_status_or_error(params, run_id) for run_id in run_ids]


def _status_or_error(params: RendezvousParameters, run_id: str) -> RendezvousStatus:
    # Opening the backend may already read the run's state (etcd probes it), so a corrupt
    # run is caught around the open as well as the read: one corrupt run does not hide the others.
    try:
        with open_backend(_for_run(params, run_id)) as session:
            return read_status(session.backend, run_id, backend_name=params.backend, endpoint=params.endpoint)
    except RendezvousStateError as exc:
        return RendezvousStatus(run_id, params.backend, safe_endpoint(params.endpoint), exists=True, error=str(exc))


def _for_run(params: RendezvousParameters, run_id: str) -> RendezvousParameters:
    return RendezvousParameters(
        params.backend, params.endpoint, run_id, params.min_nodes, params.max_nodes, params.local_addr, **params.config
    )


class ResetRefused(Exception):
    """:func:`reset_run` refused to delete a run that is still live (not closed) without ``force``."""


def reset_run(params: RendezvousParameters, *, force: bool = False) -> int:
    """Delete every key of run ``params.run_id`` (``rdzv reset``), so a new job can use the
    id at once instead of waiting for ``closed_ttl``.

    Args:
        params: Backend, endpoint, run id and configuration.
        force: Also delete a run that is not closed (its nodes lose their round and re-join
            a fresh rendezvous); without it such a run is refused.

    Returns:
        The number of keys deleted (0 when the run had none).

    Raises:
        ResetRefused: the run is live (has a state that is not closed) and ``force`` is false.
        ValueError: the backend cannot delete runs, or bad configuration.
        RendezvousConnectionError: the backend is unreachable.
    """
    with open_backend(params) as session:
        catalog = _catalog(session, params.backend)
        if not force:
            state = read_state(session.backend, params.run_id)
            if state is not None and not state.closed:
                raise ResetRefused(
                    f"The rendezvous '{params.run_id}' is live (round {state.round}, not closed): close it first "
                    f"(rdzv close --run-id {params.run_id}) or reset it with --force."
                )
        return catalog.delete_run()


def _age(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}s"


def _bounds_lines(status: RendezvousStatus) -> list[str]:
    """``nodes:`` (joined against min/max, how many more are needed) and ``last call:`` (its
    length, and when it ends while it runs)."""
    if status.min_nodes is None:
        return []
    text = f"{len(status.participants)} joined (min_nodes {status.min_nodes}, max_nodes {status.max_nodes})"
    if status.needed:
        text += f": {status.needed} more needed before the last call starts"
    lines = [f"nodes:       {text}"]
    if status.last_call_at is not None and not status.complete:
        at = time.strftime("%H:%M:%S UTC", time.gmtime(status.last_call_at))
        lines.append(f"last call:   {status.last_call_timeout:g} s, ends at {at}")
    else:
        lines.append(f"last call:   {status.last_call_timeout:g} s (starts at min_nodes)")
    return lines


def format_status_table(status: RendezvousStatus) -> str:
    """Return ``status`` as a human-readable text table (no trailing newline)."""
    where = f"{status.backend} at {status.endpoint}" if status.endpoint else status.backend
    lines = [f"run id:      {status.run_id}", f"backend:     {where}"]
    if not status.exists:
        lines.append("state:       none (no node has joined this run yet, or its keys expired)")
        return "\n".join(lines)
    if status.closed:
        phase = "closed"
    elif status.complete:
        phase = f"complete (world size {status.world_size})"
    else:
        phase = "forming"
        if status.last_call_in is not None:
            phase += (
                f" (last call ends in {status.last_call_in:.1f}s)" if status.last_call_in >= 0 else " (last call over)"
            )
    lines += [
        f"round:       {status.round}",
        f"state:       {phase}",
        f"closed:      {'yes' if status.closed else 'no'}",
    ]
    lines += _bounds_lines(status)
    rows = status.participants + status.wait_list + status.redundancy_list
    if not rows:
        lines.append("nodes:       none")
        return "\n".join(lines)
    header = ("ROLE", "RANK", "ADDRESS", "PID", "HEARTBEAT", "NODE")
    table = [header] + [
        (
            n.role,
            "-" if n.rank is None else str(n.rank),
            n.addr,
            "-" if n.pid is None else str(n.pid),
            _age(n.heartbeat_age),
            n.node,
        )
        for n in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header) - 1)]
    lines.append("")
    for row in table:
        lines.append(
            "  ".join(cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=True)) + "  " + row[-1]
        )
    lines.append("")
    lines.append(
        f"participants: {len(status.participants)}  waiting: {len(status.wait_list)}  redundant: {len(status.redundancy_list)}"
    )
    return "\n".join(lines)


def _phase(status: RendezvousStatus) -> str:
    if status.error is not None:
        return "unreadable"
    if not status.exists:
        return "gone"
    if status.closed:
        return "closed"
    return f"complete ({status.world_size})" if status.complete else "forming"


def format_runs_table(statuses: Sequence[RendezvousStatus]) -> str:
    """Return one line per run (``rdzv status --all``): run id, round, phase and the number
    of participants, waiting and redundant nodes (no trailing newline)."""
    if not statuses:
        return "no runs"
    header = ("RUN ID", "ROUND", "STATE", "PARTICIPANTS", "WAITING", "REDUNDANT")
    rows = [header] + [
        (
            s.run_id,
            str(s.round),
            _phase(s),
            str(len(s.participants)),
            str(len(s.wait_list)),
            str(len(s.redundancy_list)),
        )
        for s in statuses
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows)
