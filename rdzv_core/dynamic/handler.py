"""The elastic rendezvous handler (torch's ``DynamicRendezvousHandler``) over any backend.

It picks the path the backend allows: with :class:`~rdzv_core.backend.AtomicMembership` the
server applies joins, leaves, keep-alives and completion (:mod:`.membership`, O(1) per node);
otherwise the node runs torch's operations on its copy of the shared state and writes it back
with compare-and-set (:mod:`.executor`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import timedelta

from rdzv_core.api import (
    RendezvousConnectionError,
    RendezvousError,
    RendezvousGracefulExitError,
    RendezvousHandler,
    RendezvousInfo,
    RendezvousParameters,
    RendezvousStateError,
    RendezvousStoreInfo,
    RendezvousTimeoutError,
)
from rdzv_core.backend import AtomicMembership, BootstrapRecord, LivenessTracker, RendezvousBackend, Role, Standing
from rdzv_core.dynamic.clock import SYSTEM_CLOCK, Clock
from rdzv_core.dynamic.executor import _OpExecutor, _StateHolder
from rdzv_core.dynamic.keepalive import KeepAliveTimer
from rdzv_core.dynamic.liveness import _Liveness, _StateLiveness, _TrackerLiveness
from rdzv_core.dynamic.membership import Joined, MembershipExecutor
from rdzv_core.dynamic.ops import (
    _Action,
    _close_op,
    _Context,
    _exit_op,
    _flush_op,
    _join_op,
    _keep_alive_op,
    _Op,
    state_standing,
)
from rdzv_core.dynamic.settings import RendezvousEvent, RendezvousSettings, RendezvousTimeout
from rdzv_core.state import NodeDesc, NodeDescGenerator, RendezvousState
from rdzv_core.store import PrefixStore, Store, StoreTimeoutError

__all__ = ["DynamicRendezvousHandler", "create_handler"]

logger = logging.getLogger("rdzv_core.dynamic")
#: At most one progress line per this many seconds while the round stands still.
PROGRESS_EVERY = 30.0


class DynamicRendezvousHandler(RendezvousHandler):
    """The elastic rendezvous handler over any :class:`RendezvousBackend`.

    Create it with :meth:`from_backend` or :func:`create_handler`. Thread-safe: one lock
    serialises the public methods and the keep-alive thread. ``clock`` is the time source
    (a model passes a fake one).
    """

    _node_desc_generator = NodeDescGenerator()

    @classmethod
    def from_backend(
        cls,
        run_id: str,
        store: Store,
        backend: RendezvousBackend,
        min_nodes: int,
        max_nodes: int,
        local_addr: str | None = None,
        timeout: RendezvousTimeout | None = None,
        keep_alive_interval: float = 5,
        keep_alive_max_attempt: int = 3,
        clock: Clock = SYSTEM_CLOCK,
    ) -> DynamicRendezvousHandler:
        """Create a handler.

        Args:
            run_id: Run id of the rendezvous.
            store: The store handed out (scoped to run and round) in :class:`RendezvousInfo`.
            backend: Holds the shared state.
            min_nodes, max_nodes: Bounds of a round.
            local_addr: Address this node advertises (default: its FQDN).
            timeout: The :class:`RendezvousTimeout` (default: torch's defaults).
            keep_alive_interval: Seconds between keep-alives (float).
            keep_alive_max_attempt: Missed keep-alives after which a node counts as dead.

        Raises:
            ValueError: invalid bounds, interval or attempts; the message names the value.
        """
        if (
            isinstance(keep_alive_interval, bool)
            or not isinstance(keep_alive_interval, (int, float))
            or keep_alive_interval <= 0
        ):
            raise ValueError(
                f"The keep-alive interval ('keep_alive_interval') must be a positive number of seconds (got {keep_alive_interval!r})."
            )
        settings = RendezvousSettings(
            run_id,
            min_nodes,
            max_nodes,
            timeout or RendezvousTimeout(),
            keep_alive_interval=timedelta(seconds=keep_alive_interval),
            keep_alive_max_attempt=keep_alive_max_attempt,
        )
        node = cls._node_desc_generator.generate(local_addr)
        return cls(node, settings, backend.name, store, backend, clock=clock)

    def __init__(
        self,
        node: NodeDesc,
        settings: RendezvousSettings,
        backend_name: str,
        store: Store,
        backend: RendezvousBackend,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        if not backend_name:
            raise ValueError("The backend name must be a non-empty string.")
        self._this_node = node
        self._settings = settings
        self._backend_name = backend_name
        self._store = store
        self._backend = backend
        self._clock = clock
        self._liveness: _Liveness = (
            _TrackerLiveness(backend, settings)
            if isinstance(backend, LivenessTracker)
            else _StateLiveness(settings, clock)
        )
        self._holder = _StateHolder(backend, settings, self._liveness, node.key, self._on_dead_nodes, clock)
        self._executor = _OpExecutor(node, settings, self._holder, backend, self._liveness, self._emit, clock)
        #: The membership path, when the backend's server applies the operations.
        self._membership = (
            MembershipExecutor(node.key, settings, backend, clock, self._on_dead_nodes, self._on_standing)
            if isinstance(backend, AtomicMembership)
            else None
        )
        self._announced: set[Role] = set()
        #: (incarnation, round) of the round this node holds a rank in (membership path).
        self._joined_at: tuple[str, int] | None = None
        self._lock = threading.RLock()
        self._listeners: list[Callable[[RendezvousEvent], None]] = []
        self._keep_alives = KeepAliveTimer(
            self._keep_alive_tick,
            settings.interval_s,
            f"rdzv-keep-alive-{node.local_id}",
            self._describe_keep_alive_error,
        )
        self._bootstrap_store_info: RendezvousStoreInfo | None = None
        self._progress_key: tuple[object, ...] | None = None
        self._previous_world_size = 0  # of the last round this node completed (progress lines)
        self._progress_at = float("-inf")
        #: The round this node holds a rank in (set by next_rendezvous), else None.
        self._joined_round: int | None = None

    # -- properties -------------------------------------------------------------------------

    @property
    def settings(self) -> RendezvousSettings:
        return self._settings

    @property
    def node(self) -> NodeDesc:
        """This node's identity."""
        return self._this_node

    @property
    def backend(self) -> RendezvousBackend:
        return self._backend

    @property
    def state(self) -> RendezvousState:
        """The state: on the state-based path the last one this node read (not a copy; do not
        modify); on the membership path the whole membership read from the server now
        (O(N) bytes: for tools and tests, not for a loop)."""
        if self._membership is None:
            return self._holder.state
        current = self._backend.membership_state()  # type: ignore[attr-defined]
        return current if current is not None else RendezvousState(run_id=self._settings.run_id)

    @property
    def standing(self) -> Standing:
        """This node's :class:`~rdzv_core.backend.Standing` as last seen (no request; O(1)).

        ``round``, ``complete``, ``closed``, ``world_size``, ``missing`` and ``role`` are what
        an agent needs between rounds."""
        if self._membership is not None:
            if self._membership.standing is not None:
                return self._membership.standing
            return Standing("", 0, 0, False, False, Role.NONE, None, 0, 0, 0, 0, None)
        return state_standing(self._holder.state, self._this_node.key, self._clock.time())

    def get_backend(self) -> str:
        return self._backend_name

    def get_run_id(self) -> str:
        return self._settings.run_id

    @property
    def use_agent_store(self) -> bool:
        """``False``: workers bootstrap from ``MASTER_ADDR``/``MASTER_PORT`` (a free port on
        rank 0's address, published in the round's store), not from the agent's store."""
        return False

    # -- events -----------------------------------------------------------------------------

    def add_event_listener(self, listener: Callable[[RendezvousEvent], None]) -> None:
        """Call ``listener(event)`` on every transition of this node (exceptions are logged)."""
        self._listeners.append(listener)

    def _emit(
        self, name: str, message: str, level: int = logging.INFO, rank: int | None = None, world_size: int | None = None
    ) -> None:
        logger.log(level, message)
        event = RendezvousEvent(
            name, self._settings.run_id, self._this_node.key, self.standing.round, message, rank, world_size
        )
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                logger.exception("A rendezvous event listener failed on %s", name)

    def _on_dead_nodes(self, nodes: list[str]) -> None:
        self._emit(
            "removed_dead_nodes",
            f"The node '{self._this_node}' removes dead nodes {nodes[:10]}{' ...' if len(nodes) > 10 else ''} from round {self.standing.round} of the rendezvous '{self._settings.run_id}'.",
        )
        if self._membership is None:  # the server dropped their records itself otherwise
            for node in nodes:
                self._liveness.forget(node)

    def _on_role(self, role: Role) -> None:
        kind = {Role.WAITING: "wait list", Role.REDUNDANT: "redundancy list"}.get(role)
        if kind and role not in self._announced:
            self._announced.add(role)
            self._emit(
                "waiting",
                f"The node '{self._this_node}' waits in the {kind} for the next round of the rendezvous '{self._settings.run_id}'.",
            )

    def _on_standing(self, standing: Standing) -> None:
        """A standing the join learned: announce the role, and log the progress (INFO) when
        the round changed (version, role) and at most every :data:`PROGRESS_EVERY` s
        otherwise, so a long wait shows who is there and what is needed."""
        self._on_role(standing.role)
        self._log_progress(standing)

    def _log_progress(self, standing: Standing) -> None:
        if (standing.role is Role.PARTICIPANT and standing.complete) or not logger.isEnabledFor(logging.INFO):
            return  # joined: the "completed" event says the rest
        now = self._clock.monotonic()
        key = (standing.change_id, standing.role)
        if key == self._progress_key and now - self._progress_at < PROGRESS_EVERY:
            return
        self._progress_key, self._progress_at = key, now
        logger.info("%s", self._progress_text(standing))

    def _progress_text(self, standing: Standing) -> str:
        spec = self._settings.round_spec()
        where = {
            Role.WAITING: " from the wait list",
            Role.REDUNDANT: " from the redundancy list",
            Role.NONE: " (not placed yet)",
        }.get(standing.role, "")
        text = (
            f"The node '{self._this_node}' waits{where} for round {standing.round} of the rendezvous '{self._settings.run_id}': "
            f"{standing.participants} joined (min_nodes={spec.min_nodes}, max_nodes={spec.max_nodes}), {standing.waiting} waiting"
        )
        if self._previous_world_size:
            text += f" (the previous round this node was in had {self._previous_world_size})"
        if standing.complete:
            return text + f"; the round is complete with {standing.world_size} node(s)."
        if standing.deadline_in is not None:
            return text + f"; the last call ends in {standing.deadline_in:.1f} s."
        return text + f"; {max(0, spec.min_nodes - standing.participants)} more needed before the last call starts."

    # -- the handler API --------------------------------------------------------------------

    def next_rendezvous(self) -> RendezvousInfo:
        """Leave the current round (if any), join the next, and block until it completes and
        rank 0 has published the bootstrap address.

        A round that loses a member (declared dead, or gone) or is replaced while this node
        waits for rank 0's address is of no use: the node joins the next round, within the
        same join deadline.

        Raises:
            RendezvousClosedError: the rendezvous is closed.
            RendezvousGracefulExitError: this node is redundant and the rendezvous closed.
            RendezvousTimeoutError: no round completed within the join timeout.
            StoreTimeoutError: rank 0 did not publish its address in time (a subclass).
            RendezvousConnectionError, RendezvousStateError: from the backend.
        """
        run_id = self._settings.run_id
        self._emit(
            "joining", f"The node '{self._this_node}' attempts to join the next round of the rendezvous '{run_id}'."
        )
        deadline = self._clock.monotonic() + self._settings.join_s
        self._keep_alives.start()  # once per handler, while the join waits anyway
        try:
            while True:
                rank, world_size, round_ = self._join_round(deadline)
                # The round's store: its prefix names the incarnation too on the membership path,
                # so a round re-formed after the server lost its data never reads its keys.
                incarnation = "" if self._joined_at is None or not self._joined_at[0] else f".{self._joined_at[0]}"
                store = PrefixStore(f"rdzv.{run_id}.{round_}{incarnation}", self._store)
                bootstrap = self._bootstrap(rank, store, deadline)
                if bootstrap is not None:
                    break
                self._emit(
                    "round_broken",
                    f"Round {round_} of the rendezvous '{run_id}' lost a member before rank 0 published its address; the node '{self._this_node}' joins the next round.",
                    logging.WARNING,
                )
        except BaseException:
            self._stop_heartbeats()  # a node without a round keeps no thread
            raise
        self._bootstrap_store_info = bootstrap
        self._previous_world_size = world_size
        self._emit(
            "completed",
            f"The node '{self._this_node}' has joined round {round_} of the rendezvous '{run_id}' as rank {rank} in a world of size {world_size}.",
            rank=rank,
            world_size=world_size,
        )
        return RendezvousInfo(store, rank, world_size, bootstrap)

    def _join_round(self, deadline: float) -> tuple[int, int, int]:
        """Stop the keep-alives, leave the current round and join the next (events on errors);
        return ``(rank, world_size, round)``."""
        run_id = self._settings.run_id
        self._keep_alives.disarm(self._tick_timeout_s())
        self._joined_round = None
        self._joined_at = None
        try:
            with self._lock:
                rank, world_size, round_ = self._join(deadline)
                self._joined_round = round_
        except RendezvousTimeoutError as exc:
            self._emit(
                "timed_out",
                f"The node '{self._this_node}' timed out joining the rendezvous '{run_id}': {exc}",
                logging.WARNING,
            )
            raise
        except RendezvousGracefulExitError as exc:
            self._emit("graceful_exit", str(exc))
            raise
        except RendezvousError as exc:
            self._emit(
                "error",
                f"The node '{self._this_node}' failed to join the rendezvous '{run_id}': {type(exc).__name__}: {exc}",
                logging.WARNING,
            )
            raise
        return rank, world_size, round_

    def _bootstrap(self, rank: int, store: Store, deadline: float) -> RendezvousStoreInfo | None:
        """Agree on ``MASTER_ADDR``/``MASTER_PORT`` in the round's ``store`` and arm the
        keep-alives; ``None`` when the round broke while waiting for rank 0.

        Rank 0 publishes before arming its keep-alives (the others wait for it). The others
        keep alive while they wait, in slices of one keep-alive interval; after each slice
        they look at their standing (one request), so a rank 0 that was declared dead or a
        round that is gone ends the wait at once instead of at the join deadline. The wait is
        bounded by the join deadline (at least a heartbeat timeout), never by the store's own
        timeout (300 s by default).

        A backend with :class:`~rdzv_core.backend.BootstrapRecord` carries the address in the
        round's record instead (:meth:`_bootstrap_from_record`: fewer requests per node).

        Raises:
            StoreTimeoutError: rank 0 did not publish by then.
        """
        until = self._clock.monotonic() + min(
            max(deadline - self._clock.monotonic(), self._settings.timeout.heartbeat.total_seconds()),
            store.timeout.total_seconds(),
        )
        if self._membership is not None and isinstance(self._backend, BootstrapRecord):
            return self._bootstrap_from_record(rank, store, until)
        if rank == 0:
            info = RendezvousStoreInfo.build(rank, store, local_addr=self._this_node.addr)
            self._arm_keep_alives()
            return info
        self._arm_keep_alives()
        while True:
            remaining = until - self._clock.monotonic()
            slice_ = min(remaining, self._settings.interval_s)
            try:
                return RendezvousStoreInfo.build(rank, store, self._this_node.addr, timeout=max(0.0, slice_))
            except StoreTimeoutError:
                if slice_ >= remaining:
                    raise
                if self._round_broke():
                    return None

    def _bootstrap_from_record(self, rank: int, store: Store, until: float) -> RendezvousStoreInfo | None:
        """The bootstrap through the round's record (:class:`~rdzv_core.backend.BootstrapRecord`).

        Rank 0 writes ``MASTER_ADDR``/``MASTER_PORT`` to the round's store (torch's keys, for
        whoever reads them there) and publishes them in the record (one request each); the
        announcement wakes the others, which read their standing (one request) and find the
        address in it. A member that learned of the completion late finds it in the standing
        that gave it its rank: no request at all. Every wait is one keep-alive interval at
        most and ends with a read of the node's standing, so a lost announcement, a round that
        lost a member or a record that is gone ends the wait within an interval (``None``:
        join the next round).

        Raises:
            StoreTimeoutError: rank 0 did not publish by ``until`` (monotonic s).
            RendezvousStateError: the record holds an address rdzv did not write.
        """
        ex = self._membership
        assert ex is not None
        started = self._clock.monotonic()
        if rank == 0:
            info = RendezvousStoreInfo.build(rank, store, local_addr=self._this_node.addr)
            with self._lock:
                ex.publish_bootstrap(self._joined_round or 0, info.encode())
        self._arm_keep_alives()
        while True:
            with self._lock:
                standing = ex.standing
                assert standing is not None
                if self._broken(standing):
                    return None
                if standing.bootstrap is not None:
                    return self._decode_bootstrap(standing.bootstrap)
            remaining = until - self._clock.monotonic()
            if remaining <= 0:
                raise StoreTimeoutError(
                    f"Rank 0 of round {standing.round} of the rendezvous '{self._settings.run_id}' did not publish its bootstrap address "
                    f"within {until - started:.1f} s (the node '{self._this_node}' holds rank {rank})."
                )
            ex.wait_for_change(min(remaining, self._settings.interval_s))
            with self._lock:
                ex.refresh()

    def _decode_bootstrap(self, text: str) -> RendezvousStoreInfo:
        try:
            return RendezvousStoreInfo.decode(text)
        except ValueError as exc:
            raise RendezvousStateError(
                f"The round record of the rendezvous '{self._settings.run_id}' holds a bootstrap address rdzv did not write: {exc}"
            ) from None

    def _round_broke(self) -> bool:
        """Whether the round this node just joined lost a participant or is gone (one read)."""
        with self._lock:
            if self._membership is not None:
                standing = self._membership.refresh()
            else:
                self._holder.sync()
                standing = self.standing
            return self._broken(standing)

    def _broken(self, standing: Standing) -> bool:
        """Whether ``standing`` shows the round this node joined short of a participant, or gone."""
        return standing.missing > 0 or not self._holds_joined_round(standing)

    def _holds_joined_round(self, standing: Standing) -> bool:
        """Whether ``standing`` still shows this node as a participant of the round it joined
        (on the membership path: of the same incarnation too)."""
        if standing.role is not Role.PARTICIPANT or standing.round != self._joined_round:
            return False
        return self._membership is None or (standing.incarnation, standing.round) == self._joined_at

    def _join(self, deadline: float) -> tuple[int, int, int]:
        """Leave the current round and join the next; return ``(rank, world_size, round)``."""
        if self._membership is not None:
            self._leave_for_next_round(self._membership)
            return self._record_join(self._membership.run(deadline))
        self._executor.run(_exit_op, deadline)
        self._executor.run(self._join_op_with_events(), deadline)
        state = self._holder.state
        # The size the round completed with: a participant removed since (declared dead) must
        # not shrink it below this node's rank; num_nodes_waiting() now reports the missing
        # node, so the agents re-rendezvous.
        return state.rank_of(self._this_node.key), state.world_size or len(state.participants), state.round

    def _leave_for_next_round(self, ex: MembershipExecutor) -> None:
        """Leave the lists this node is in (torch's exit operation before a join)."""
        if ex.standing is not None and ex.standing.role is not Role.NONE:
            ex.leave()

    def _record_join(self, joined: Joined) -> tuple[int, int, int]:
        """Remember the round this node joined; return ``(rank, world_size, round)``."""
        self._joined_at = (joined.standing.incarnation, joined.round)
        self._joined_round = joined.round
        return joined.rank, joined.world_size, joined.round

    def _join_op_with_events(self) -> _Op:
        announced: set[str] = set()

        def op(ctx: _Context, deadline: float) -> _Action:
            action = _join_op(ctx, deadline)
            if action is _Action.SYNC:  # waiting: the same progress lines as the membership path
                self._log_progress(state_standing(ctx.state, ctx.node, ctx.wall))
            kind = {_Action.ADD_TO_WAIT_LIST: "wait list", _Action.ADD_TO_REDUNDANCY_LIST: "redundancy list"}.get(
                action
            )
            if kind and kind not in announced:
                announced.add(kind)
                self._emit(
                    "waiting",
                    f"The node '{self._this_node}' waits in the {kind} for the next round of the rendezvous '{self._settings.run_id}'.",
                )
            return action

        return op

    def is_closed(self) -> bool:
        """Read the state (or this node's standing) and return whether the rendezvous is closed."""
        with self._lock:
            if self._membership is not None:
                return self._membership.refresh().closed
            self._holder.sync()
            return self._holder.state.closed

    def set_closed(self) -> None:
        """Mark the rendezvous closed (within the close timeout).

        Raises:
            RendezvousTimeoutError: it could not be written in time. Backend errors propagate.
        """
        self._close()

    def _close(self) -> None:
        # Not under self._lock, which a pending next_rendezvous holds until its round completes
        # or times out: closing runs on its own copy of the state (compare-and-set keeps it
        # consistent), so it ends that join at once with RendezvousClosedError.
        if self._membership is not None:
            MembershipExecutor(self._this_node.key, self._settings, self._backend, self._clock).close()  # type: ignore[arg-type]
        else:
            deadline = self._clock.monotonic() + self._settings.timeout.close.total_seconds()
            holder = _StateHolder(
                self._backend, self._settings, self._liveness, self._this_node.key, self._on_dead_nodes, self._clock
            )
            _OpExecutor(
                self._this_node, self._settings, holder, self._backend, self._liveness, self._emit, self._clock
            ).run(_close_op, deadline)
        self._emit("closed", f"The node '{self._this_node}' has closed the rendezvous '{self._settings.run_id}'.")

    def num_nodes_waiting(self) -> int:
        """Return the number of nodes waiting for the next round.

        This counts the wait list, plus the participants of a complete round that have been
        removed (dead or gone): either way the round should re-form. It is at least 1 when the
        round this node holds a rank in no longer exists (the backend lost the state, or the
        others formed a new round without this node): the rank is stale. With a backend that
        has change notification, an unchanged state is served from the local copy; on the
        membership path the counts come from this node's standing (one small request, and
        none while no change was announced).
        """
        with self._lock:
            if self._membership is not None:
                standing = self._current_standing(self._membership)
            else:
                if self._holder.changed():
                    self._holder.sync()
                    if self._holder.dirty:
                        self._executor.run(
                            _flush_op, self._clock.monotonic() + self._settings.timeout.heartbeat.total_seconds()
                        )
                standing = self.standing
            waiting = standing.waiting + standing.missing
            if (
                not waiting
                and self._joined_round is not None
                and not standing.closed
                and not self._holds_joined_round(standing)
            ):
                return 1  # the round this node holds a rank in is gone: the rank is stale
            return waiting

    def _current_standing(self, ex: MembershipExecutor) -> Standing:
        """The standing, read again only when a change was announced (or none is known)."""
        standing = ex.standing
        try:
            changed = standing is None or self._backend.wait_for_round_change(standing.change_id, 0)  # type: ignore[attr-defined]
        except RendezvousConnectionError:
            changed = True  # only a hint: the read that follows retries for the full budget
        return ex.refresh() if changed or standing is None else standing

    def shutdown(self) -> bool:
        """Stop keep-alives and close the rendezvous (as torch's handler does).

        Returns:
            ``True`` when closed; ``False`` (and a warning) when the backend failed.
        """
        self._stop_heartbeats()
        try:
            self._close()
            return True
        except RendezvousError as exc:
            logger.warning(
                "The node '%s' has failed to shut down the rendezvous '%s': %s: %s",
                self._this_node,
                self._settings.run_id,
                type(exc).__name__,
                exc,
            )
            return False

    # -- keep-alives ------------------------------------------------------------------------

    def _keep_alive_tick(self) -> None:
        deadline = self._clock.monotonic() + self._settings.timeout.heartbeat.total_seconds()
        with self._lock:
            if self._membership is not None:
                self._membership.keep_alive()
                return
            if self._liveness.writes_state:
                self._executor.run(_keep_alive_op, deadline)
                return
            self._holder.call(lambda: self._liveness.beat(self._this_node.key, self._holder.state))
            if self._holder.check_dead():
                self._executor.run(_flush_op, deadline)

    def _arm_keep_alives(self) -> None:
        """Tick once the join's last keep-alive is an interval old (membership path), so a
        node is never silent for more than an interval; on the state path after half an
        interval (jittered: the N keep-alives of a large round do not all come at once)."""
        if self._membership is not None:
            first_in = self._membership.next_beat_in()
        else:
            first_in = self._settings.interval_s * self._clock.uniform(0.4, 0.6)
        self._keep_alives.arm(first_in)

    def _describe_keep_alive_error(self, exc: BaseException) -> str:
        return f"The keep-alive of node '{self._this_node}' in the rendezvous '{self._settings.run_id}' failed: {type(exc).__name__}: {exc}"

    def _tick_timeout_s(self) -> float:
        """How long a keep-alive under way may take (seconds)."""
        return self._settings.timeout.heartbeat.total_seconds() + self._settings.interval_s

    def _stop_heartbeats(self) -> None:
        """Stop the keep-alives and end their thread (a node that stops here falls silent)."""
        self._keep_alives.stop(self._tick_timeout_s())


def handler_options(params: RendezvousParameters) -> tuple[RendezvousTimeout, float, int]:
    """The handler's options of ``params.config`` (see :func:`create_handler`), checked:
    ``(timeouts, keep_alive_interval seconds, keep_alive_max_attempt)``.

    Raises:
        ValueError: a value is not a positive number (or int); the message names the key.
    """
    timeout = RendezvousTimeout(
        join=_timedelta_or_none(_positive_seconds(params, "join_timeout")),
        last_call=_timedelta_or_none(_positive_seconds(params, "last_call_timeout")),
        close=_timedelta_or_none(_positive_seconds(params, "close_timeout")),
        heartbeat=_timedelta_or_none(_positive_seconds(params, "heartbeat_timeout")),
    )
    interval = _positive_seconds(params, "keep_alive_interval") or 5.0
    attempts = params.get_as_int("keep_alive_max_attempt", 3)
    if attempts is None or attempts < 1:
        raise ValueError(
            f"The rendezvous configuration option 'keep_alive_max_attempt' must be an integer >= 1 (got {params.get('keep_alive_max_attempt')!r})."
        )
    return timeout, interval, attempts


def _positive_seconds(params: RendezvousParameters, key: str) -> float | None:
    value = params.get_as_float(key)
    if value is not None and value <= 0:
        raise ValueError(
            f"The rendezvous configuration option '{key}' must be a positive number of seconds (got {params.get(key)!r})."
        )
    return value


def _timedelta_or_none(seconds: float | None) -> timedelta | None:
    return None if seconds is None else timedelta(seconds=seconds)


def create_handler(store: Store, backend: RendezvousBackend, params: RendezvousParameters) -> DynamicRendezvousHandler:
    """Create a :class:`DynamicRendezvousHandler` from ``params``.

    +------------------------+------------------------------------------------------------+
    | key                    | meaning (seconds unless said otherwise)                    |
    +========================+============================================================+
    | join_timeout           | time for a round to complete; default 600                  |
    | last_call_timeout      | wait after min_nodes joined before completing; default 30  |
    | close_timeout          | time to mark the rendezvous closed; default 30             |
    | heartbeat_timeout      | time for one keep-alive; default 5                         |
    | keep_alive_interval    | seconds between keep-alives; default 5                     |
    | keep_alive_max_attempt | missed keep-alives before a node is dead (int); default 3  |
    +------------------------+------------------------------------------------------------+

    Raises:
        ValueError: a value is not a positive number (or int); the message names the key.
    """
    timeout, interval, attempts = handler_options(params)
    return DynamicRendezvousHandler.from_backend(
        params.run_id,
        store,
        backend,
        params.min_nodes,
        params.max_nodes,
        params.local_addr,
        timeout,
        keep_alive_interval=interval,
        keep_alive_max_attempt=attempts,
    )
