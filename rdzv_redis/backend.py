"""``RedisRendezvousBackend``: the rendezvous of one run in Redis — torch's state blob and
rdzv's server-applied membership.

Keys (all ``rdzv:{R}:*`` with the run id ``R`` as hash tag, see :mod:`rdzv_redis.keys`):

* ``rdzv:{R}:state`` — a STRING ``b"RDZV1 " + token + b"\\n" + state``. Keeping the token in
  the same value as the state makes every read and write of both atomic and lets a corrupt
  value be recognised (:class:`~rdzv_core.api.RendezvousStateError`).
* ``rdzv:{R}:alive`` / ``rdzv:{R}:alive:until`` — ZSETs of keep-alives: node -> last beat and
  node -> lapse time (server ``TIME``, microseconds).
* ``rdzv:{R}:joins`` / ``rdzv:{R}:joins:seq`` — the join queue (ZSET by arrival) and its
  arrival counter.
* ``rdzv:{R}:round`` (HASH: inc, ver, round, complete, closed, world, deadline, seq) and
  ``rdzv:{R}:round:participants`` / ``:wait`` / ``:redundant`` (ZSETs) — the membership
  (:class:`~rdzv_core.backend.AtomicMembership`). ``scripts/round.lua`` applies each operation
  (join, leave, complete, keep-alive + sweep, standing, close) atomically in ONE ``EVALSHA``,
  with the semantics of :mod:`rdzv_core.rounds`, and answers with the caller's
  :class:`~rdzv_core.backend.Standing` (O(1) bytes), so a node costs O(1) requests and bytes
  per round. A version bump is announced as ``"<inc>:<ver>"`` on ``rdzv:{R}:round:changed``.

A *token* is the str ``"<version>-<nonce>"``: ``version`` counts writes of the run, ``nonce``
is 16 random hex digits chosen by the writer, so a token never repeats — not even after the
key expired and the run started over. ``set_state`` runs ``scripts/set_state.lua``; a retried
call re-sends the same nonce, so a write that was applied before the connection broke is
reported as applied (``has_set=True``) rather than lost.

Every write refreshes the expiry (``key_ttl``) of all keys of the run; keep-alives do too, so a
run in training keeps its keys while an abandoned one disappears.

The state blob (``get_state`` / ``set_state`` / ``wait_for_change``) is torch's
``RendezvousBackend`` contract; rdzv's own handler uses the membership. Every call is the
node's own request: nothing is shared, coalesced, serialised or answered locally across the
node objects of a process (a benchmark node costs what a real node costs). Node objects of a
process share one :class:`~rdzv_redis.client.RedisClient` (connection pool and pub/sub
listener) unless :func:`create_backend` is called with ``shared=False``.
"""

from __future__ import annotations

import functools
import re
import secrets
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from rdzv_core.api import RendezvousParameters, RendezvousStateError
from rdzv_core.backend import RendezvousBackend, Role, RoundSpec, Standing, Token, check_bootstrap
from rdzv_core.rounds import SWEEP_LIMIT
from rdzv_core.state import RendezvousState
from rdzv_redis.client import RedisClient, RedisConfig
from rdzv_redis.keys import CHANNEL_PREFIX, RunKeys

if TYPE_CHECKING:
    from rdzv_redis.store import RedisStore

__all__ = ["RedisRendezvousBackend", "create_backend", "STATE_MAGIC"]

#: Every state value starts with this.
STATE_MAGIC = b"RDZV1 "
_TOKEN_RE = re.compile(r"\A[0-9]+-[0-9a-f]{16}\Z")
#: The header (magic + token + newline) fits in this many bytes.
_HEADER_MAX = 64
#: Nodes per command or script call (Lua's unpack() has a stack limit).
_NODES_PER_CALL = 512
#: COUNT hint of the SCANs of the administrative RunCatalog operations.
_SCAN_COUNT = 1000
#: Upper bound (seconds) of the window in which a repeated keep-alive is skipped.
_KEEP_ALIVE_DEDUP = 0.5
#: The fixed fields of a ``round.lua`` standing (the removed nodes follow).
_STANDING_FIELDS = 14


class _Unreadable:
    """Stands for a stored token that cannot be parsed: it differs from every token."""


_UNREADABLE = _Unreadable()


class RedisRendezvousBackend(RendezvousBackend):
    """The rendezvous state of run ``run_id`` in Redis, with change notification, liveness
    records, a join queue and the server-applied membership (implements
    :class:`~rdzv_core.backend.ChangeNotifier`, :class:`~rdzv_core.backend.LivenessTracker`,
    :class:`~rdzv_core.backend.JoinQueue` and :class:`~rdzv_core.backend.AtomicMembership`).

    Args:
        client: A client from :meth:`RedisClient.acquire`; this backend owns that reference
            and releases it in :meth:`close`.
        run_id: The run id (str, not empty).
        key_ttl: Seconds the run's keys live after the last write or keep-alive; ``None``
            uses ``client.config.key_ttl``.
        closed_ttl: Seconds they live once the rendezvous is closed (every write of a closed
            record sets this expiry); ``None`` uses ``client.config.closed_ttl``.

    Every method may raise :class:`~rdzv_core.api.RendezvousConnectionError` when Redis
    stays unreachable for the client's retry budget or authentication fails (all requests go
    through ``client.call``). The membership methods raise
    :class:`~rdzv_core.api.RendezvousStateError` when the round hash holds something rdzv did
    not write (a non-integer field, fields without an incarnation).
    """

    def __init__(
        self, client: RedisClient, run_id: str, *, key_ttl: float | None = None, closed_ttl: float | None = None
    ) -> None:
        if not run_id:
            raise ValueError("The run id must be a non-empty string.")
        self._client = client
        self._run_id = run_id
        self._keys = RunKeys(run_id)
        self._ttl_ms = int(1000 * (client.config.key_ttl if key_ttl is None else key_ttl))
        self._closed_ttl_ms = int(1000 * (client.config.closed_ttl if closed_ttl is None else closed_ttl))
        self._closed = False
        self._keep_alive_sent: dict[str, tuple[float, int]] = {}
        client.notifier.track(self._keys.state_channel)
        client.notifier.track(self._keys.round_channel)

    def __repr__(self) -> str:
        return f"RedisRendezvousBackend(run_id={self._run_id!r}, redis={self._client.config.display!r})"

    @property
    def name(self) -> str:
        return "redis"

    @property
    def run_id(self) -> str:
        return self._run_id

    @property
    def keys(self) -> RunKeys:
        """The Redis key names of this run."""
        return self._keys

    # -- RendezvousBackend --------------------------------------------------------------------

    def get_state(self) -> tuple[bytes, Token] | None:
        """Return ``(state bytes, token str)``, or ``None`` when the run has no state (``GET``).

        Raises:
            RendezvousStateError: the state key holds something this backend did not write.
        """
        raw = self._get_raw_state()
        return None if raw is None else self._decode(raw)

    def _get_raw_state(self) -> bytes | None:
        return self._client.call("get_state", lambda: self._client.redis.get(self._keys.state))  # type: ignore[no-any-return]

    def set_state(self, state: bytes, token: Token | None = None) -> tuple[bytes, Token, bool] | None:
        """Compare-and-set the state in one Lua script (``scripts/set_state.lua``: ``GET``,
        ``SET ... PX``, ``PEXPIRE``, ``PUBLISH``).

        Args:
            state: The new state (bytes-like).
            token: The token (str) of the state the caller read, or ``None`` to create the
                state only if none exists. Any other value is a foreign token: not set.

        Returns:
            ``(state, token, has_set)`` after the call; ``None`` when a token was given but no
            state exists (the caller re-reads).

        Raises:
            RendezvousStateError: the stored state is corrupt.
        """
        state = bytes(state)
        if token is not None and not (isinstance(token, str) and _TOKEN_RE.match(token)):
            current = self.get_state()
            return None if current is None else (current[0], current[1], False)
        return self._compare_and_set(state, token)

    def _compare_and_set(self, state: bytes, token: str | None) -> tuple[bytes, str, bool] | None:
        nonce = secrets.token_hex(8)  # the same for a retry of this call (see set_state.lua)
        args = [token or "", nonce, state, self._ttl_ms, self._keys.state_channel]
        script = self._client.scripts["set_state"]
        reply = self._client.call("set_state", lambda: script(keys=self._keys.all_keys(), args=args))
        if reply[0] == -1:
            return None
        if reply[0] == 1:
            return state, reply[1].decode(), True
        stored_state, stored_token = self._decode(reply[1])
        return stored_state, stored_token, False

    def close(self) -> None:
        """Release this backend's reference to the shared client (idempotent)."""
        if not self._closed:
            self._closed = True
            self._client.notifier.untrack(self._keys.state_channel)
            self._client.notifier.untrack(self._keys.round_channel)
            self._client.release()

    # -- ChangeNotifier -----------------------------------------------------------------------

    def wait_for_change(self, token: Token | None, timeout: float) -> bool:
        """Block until the stored token differs from ``token`` (``None``: no state yet) or
        ``timeout`` seconds pass.

        A waiter is registered with the client's pub/sub listener (channel
        ``rdzv:{R}:state:changed``, whose messages carry the new token) *before* anything is
        checked, so no change is missed. The first check uses the newest token the listener
        has seen when it knows one, and otherwise reads the token from the server
        (``GETRANGE`` of the value's header). ``timeout == 0``
        always reads the server.

        Returns:
            ``True`` when the token differs (also when the stored value is unreadable, so the
            caller's next read reports it), ``False`` after ``timeout``.
        """
        deadline = time.monotonic() + max(0.0, timeout)
        return self._wait_announced(
            self._keys.state_channel,
            deadline,
            lambda announced: self._changed(announced, token, deadline),
            trust_latest=timeout > 0,
        )

    def _wait_announced(
        self, channel: str, deadline: float, changed: Callable[[bytes | None], bool], *, trust_latest: bool = True
    ) -> bool:
        """The race-free wait of both notifications (see :mod:`rdzv_redis.notify`): register a
        waiter on the tracked ``channel``, check ``changed(newest announcement or None)``, then
        sleep until a message or ``deadline`` (monotonic s) and check again; ``None`` (nothing
        announced, or the connection was re-made) makes ``changed`` ask the server. Returns
        whether it changed."""
        notifier = self._client.notifier
        with notifier.waiter([channel], deadline - time.monotonic()) as waiter:
            if changed(notifier.latest(channel) if trust_latest else None):
                return True
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not notifier.sleep(waiter, remaining):
                    return False
                waiter.clear()
                announced = None if waiter.resync else waiter.last_payload  # resync: ask the server
                waiter.resync = False
                if changed(announced):
                    return True

    def _changed(self, announced: bytes | None, token: Token | None, deadline: float) -> bool:
        """Whether the state changed from ``token``, judged from an announced token when
        that suffices (see :func:`_differs`) and from the server otherwise."""
        verdict = _differs(announced, token)
        return verdict if verdict is not None else self._read_token(deadline) != token

    def _read_token(self, deadline: float | None = None) -> Any:
        """The stored token (str), ``None`` without state, or an unreadable marker."""

        def read() -> bytes:
            return self._client.call(  # type: ignore[no-any-return]
                "wait_for_change",
                lambda: self._client.redis.getrange(self._keys.state, 0, _HEADER_MAX - 1),
                deadline=deadline,
            )

        head = read()
        if not head:
            return None
        header, newline, _ = head.partition(b"\n")
        token = header[len(STATE_MAGIC) :].decode("ascii", "replace")
        if not newline or not header.startswith(STATE_MAGIC) or not _TOKEN_RE.match(token):
            return _UNREADABLE
        return token

    # -- LivenessTracker ----------------------------------------------------------------------

    def keep_alive(self, node: str, ttl: float) -> None:
        """Record that ``node`` is alive now (server ``TIME``); the record lapses after
        ``ttl`` seconds (``scripts/keep_alive.lua``: ``ZADD`` on ``rdzv:{R}:alive`` and
        ``rdzv:{R}:alive:until``, prunes a few lapsed records, refreshes key expiry).

        A keep-alive of the same node less than ``min(0.5, ttl / 20)`` seconds after the
        previous one through this object is skipped: the record is that fresh already —
        unless the pub/sub listener lost or regained its connection in between (its epoch
        changed): the server may have restarted and lost the record, and a node without one
        is declared dead by the others.
        """
        now, epoch = time.monotonic(), self._client.notifier.epoch
        sent_at, sent_epoch = self._keep_alive_sent.get(node, (float("-inf"), epoch))
        if epoch == sent_epoch and now - sent_at < min(_KEEP_ALIVE_DEDUP, ttl / 20):
            return
        script = self._client.scripts["keep_alive"]
        args = [node, max(1, int(ttl * 1_000_000)), self._ttl_ms]
        keys = [self._keys.alive, self._keys.alive_until, self._keys.state, self._keys.store]
        self._client.call("keep_alive", lambda: script(keys=keys, args=args))
        self._keep_alive_sent[node] = (now, epoch)

    def heartbeat_ages(self, nodes: Sequence[str]) -> list[float | None]:
        """Return per node the seconds (float) since its last keep-alive, or ``None`` when it
        has no unexpired record. One script call (``ZMSCORE`` x2) per 512 nodes."""
        nodes = list(nodes)
        ages: list[float | None] = []
        script = self._client.scripts["heartbeat_ages"]
        keys = [self._keys.alive, self._keys.alive_until]
        for i in range(0, len(nodes), _NODES_PER_CALL):
            chunk = nodes[i : i + _NODES_PER_CALL]
            reply = self._client.call("heartbeat_ages", functools.partial(script, keys=keys, args=chunk))
            ages.extend(None if age is None else int(age) / 1_000_000 for age in reply)
        return ages

    def forget_node(self, node: str) -> None:
        """Delete the liveness record of ``node`` (``ZREM`` on both ZSETs, in ``MULTI``)."""

        def forget() -> None:
            pipe = self._client.redis.pipeline(transaction=True)
            pipe.zrem(self._keys.alive, node)
            pipe.zrem(self._keys.alive_until, node)
            pipe.execute()

        self._client.call("forget_node", forget)
        self._keep_alive_sent.pop(node, None)

    # -- RunCatalog ---------------------------------------------------------------------------

    def list_run_ids(self) -> list[str]:
        """Return the ids of the runs with keys on the server (``SCAN MATCH rdzv:{*}:*``; the
        run id is the hash tag of each key)."""

        def scan() -> list[str]:
            runs = set()
            for key in self._client.redis.scan_iter(match=CHANNEL_PREFIX + "{*}:*", count=_SCAN_COUNT):
                text = key.decode(errors="replace") if isinstance(key, bytes) else str(key)
                run, sep, _ = text[len(CHANNEL_PREFIX) + 1 :].rpartition("}:")  # no '}' after the tag
                if sep and run:
                    runs.add(run)
            return sorted(runs)

        return self._client.call("list_run_ids", scan)

    def delete_run(self) -> int:
        """Delete every key of the run (``SCAN MATCH rdzv:{R}:*`` with ``R``'s glob characters
        escaped, then ``UNLINK`` in batches); return how many keys went."""
        pattern = _glob_escape(self._keys.prefix) + "*"

        def delete() -> int:
            keys = list(self._client.redis.scan_iter(match=pattern, count=_SCAN_COUNT))
            return sum(
                int(self._client.redis.unlink(*keys[i : i + _NODES_PER_CALL]))
                for i in range(0, len(keys), _NODES_PER_CALL)
            )

        deleted = int(self._client.call("delete_run", delete))
        self._keep_alive_sent.clear()
        return deleted

    # -- JoinQueue ----------------------------------------------------------------------------

    def enqueue_join(self, node: str) -> int:
        """Queue ``node`` for admission (``scripts/enqueue_join.lua``: ``INCR`` of
        ``rdzv:{R}:joins:seq``, ``ZADD`` to ``rdzv:{R}:joins``, ``ZRANK``); a queued node keeps
        its place. Returns its 1-based position (int)."""
        script = self._client.scripts["enqueue_join"]
        keys = [self._keys.joins, self._keys.joins_seq]
        return int(self._client.call("enqueue_join", lambda: script(keys=keys, args=[node, self._ttl_ms])))

    def pending_joins(self) -> list[str]:
        """Return the queued nodes (str) in arrival order (``ZRANGE rdzv:{R}:joins 0 -1``).

        Raises:
            RendezvousStateError: an entry is not UTF-8 (rdzv did not write it).
        """
        members = self._client.call("pending_joins", lambda: self._client.redis.zrange(self._keys.joins, 0, -1))
        try:
            return [member.decode() for member in members]
        except UnicodeDecodeError:
            raise RendezvousStateError(
                f"The join queue of run '{self._run_id}' in Redis at {self._client.config.display} (key '{self._keys.joins}') "
                "holds an entry rdzv did not write (not UTF-8)."
            ) from None

    def pending_join_count(self) -> int:
        """Return the length of the join queue (``ZCARD rdzv:{R}:joins``)."""
        return int(self._client.call("pending_join_count", lambda: self._client.redis.zcard(self._keys.joins)))

    def ack_joins(self, nodes: Sequence[str]) -> None:
        """Remove admitted ``nodes`` from the join queue (``ZREM rdzv:{R}:joins``; idempotent,
        so it is safe to retry)."""
        nodes = list(nodes)
        for i in range(0, len(nodes), _NODES_PER_CALL):
            chunk = nodes[i : i + _NODES_PER_CALL]
            self._client.call("ack_joins", functools.partial(self._client.redis.zrem, self._keys.joins, *chunk))

    # -- AtomicMembership ---------------------------------------------------------------------

    def _round(self, op: str, node: str, spec: RoundSpec | None = None, extra: str = "", value: str = "") -> list[Any]:
        """Run ``op`` of ``scripts/round.lua`` (exactly one ``EVALSHA``); return its raw reply.

        ARGV carries the spec in integers (last call and dead-node timeout in microseconds),
        the key expiry (ms), the change channel, a fresh 16-hex-digit nonce (the incarnation
        if this call creates the record) and :data:`~rdzv_core.rounds.SWEEP_LIMIT`.

        Raises:
            RendezvousConnectionError: Redis unreachable within the retry budget.
            RendezvousStateError: the round hash holds something rdzv did not write.
        """
        carried = "1" if spec is not None else ""
        spec = spec or RoundSpec(1, 1, 0.0, 0.0)
        args = [
            op, node, spec.min_nodes, spec.max_nodes, int(spec.last_call * 1_000_000), int(spec.dead_after * 1_000_000),
            self._ttl_ms, self._keys.round_channel, secrets.token_hex(8), extra, SWEEP_LIMIT, value, self._closed_ttl_ms,
            carried,
        ]  # fmt: skip
        script = self._client.scripts["round"]
        reply = self._client.call(f"round {op}", lambda: script(keys=self._keys.round_keys(), args=args))
        if reply and reply[0] == b"corrupt":
            raise RendezvousStateError(
                f"The membership of run '{self._run_id}' in Redis at {self._client.config.display} (key '{self._keys.round}') "
                f"is corrupt or was not written by rdzv: field {reply[1].decode(errors='replace')!r} is missing or not a number."
            )
        return reply  # type: ignore[no-any-return]

    def _standing(self, reply: list[Any]) -> Standing:
        """The :class:`Standing` of a ``round.lua`` reply ``{inc, ver, round, complete, closed,
        role, rank|-1, world, participants, waiting, redundant, deadline_in_us|-1,
        left_redundancy, bootstrap|'', removed...}`` (the one decoder of all operations)."""
        try:
            (
                inc,
                ver,
                round_,
                complete,
                closed,
                role,
                rank,
                world,
                participants,
                waiting,
                redundant,
                deadline_in,
                left,
                boot,
            ) = reply[:_STANDING_FIELDS]
            return Standing(
                inc.decode(), int(ver), int(round_), bool(complete), bool(closed), Role(role.decode()), None if rank < 0 else int(rank),
                int(world), int(participants), int(waiting), int(redundant), None if deadline_in < 0 else deadline_in / 1_000_000, bool(left),
                boot.decode() or None,
            )  # fmt: skip
        except (TypeError, ValueError, AttributeError, UnicodeDecodeError) as exc:
            raise RendezvousStateError(
                f"The membership of run '{self._run_id}' in Redis at {self._client.config.display} (key '{self._keys.round}') "
                f"gave an unreadable standing ({type(exc).__name__}: {exc})."
            ) from None

    def join_round(self, node: str, spec: RoundSpec) -> Standing:
        """Keep-alive and admission of ``node`` (``round.lua`` op ``join``; see
        :meth:`AtomicMembership.join_round <rdzv_core.backend.AtomicMembership.join_round>`).

        One ``EVALSHA``: ``TIME``; ``ZADD`` of the keep-alive to ``rdzv:{R}:alive`` and
        ``rdzv:{R}:alive:until``; ``ZADD`` to ``rdzv:{R}:round:participants`` (open round),
        ``:wait`` (complete round with room) or ``:redundant`` (full round); ``HSET
        rdzv:{R}:round`` (created with a new incarnation when absent); ``PEXPIRE`` of every
        key of the run; ``PUBLISH rdzv:{R}:round:changed`` when the version was bumped.

        Args:
            node: The node key (str).
            spec: Minimum/maximum nodes, last call and dead-node timeout (seconds).

        Returns:
            The node's :class:`Standing` after the call.

        Raises:
            RendezvousConnectionError: Redis unreachable within the retry budget.
            RendezvousStateError: the round hash is corrupt.
        """
        return self._standing(self._round("join", node, spec))

    def leave_round(self, node: str, spec: RoundSpec) -> Standing:
        """Remove ``node`` from the participants, the wait list and the redundancy list
        (``round.lua`` op ``leave``: ``ZREM`` x3, ``HSET``, ``PEXPIRE``, maybe ``PUBLISH``); its
        keep-alive record stays. When the last participant of a complete round leaves, the
        next round opens. Without a record: the empty standing (nothing is created).

        Raises:
            RendezvousConnectionError, RendezvousStateError: as :meth:`join_round`.
        """
        return self._standing(self._round("leave", node, spec))

    def complete_round(self, node: str, spec: RoundSpec, round_: int) -> Standing:
        """Complete round ``round_`` (int) when it is still open, has ``spec.min_nodes``
        participants and its last call ended by the server's ``TIME`` (``round.lua`` op
        ``complete``: ranks rewritten as ZSET scores in key order, wait list deleted;
        idempotent). Without a record: the empty standing (nothing is created).

        Raises:
            RendezvousConnectionError, RendezvousStateError: as :meth:`join_round`.
        """
        return self._standing(self._round("complete", node, spec, str(round_)))

    def keep_alive_round(self, node: str, spec: RoundSpec, sweep: bool) -> tuple[Standing, list[str]]:
        """Keep-alive of ``node`` (server ``TIME``; lapses after ``spec.dead_after`` seconds)
        and, when ``sweep``, removal of every other node whose record lapsed, at most
        :data:`~rdzv_core.rounds.SWEEP_LIMIT` records per call (``ZRANGEBYSCORE
        rdzv:{R}:alive:until -inf (now LIMIT``; ``round.lua`` op ``keep_alive``). Without a
        record only the keep-alive is written and the empty standing is answered.

        Returns:
            ``(standing, removed)``: the caller's standing and the keys (str) of the nodes the
            sweep removed from a list (O(removed) bytes).

        Raises:
            RendezvousConnectionError, RendezvousStateError: as :meth:`join_round`.
        """
        reply = self._round("keep_alive", node, spec, "1" if sweep else "0")
        return self._standing(reply), [who.decode(errors="replace") for who in reply[_STANDING_FIELDS:]]

    def round_standing(self, node: str) -> Standing:
        """The standing of ``node`` (``round.lua`` op ``standing``: read-only, ``HMGET``,
        ``ZSCORE``, ``ZCARD``). Without a record: the empty standing.

        Raises:
            RendezvousConnectionError, RendezvousStateError: as :meth:`join_round`.
        """
        return self._standing(self._round("standing", node))

    def close_rendezvous(self, node: str) -> Standing:
        """Mark the rendezvous closed (``round.lua`` op ``close``; creates the record when
        absent; idempotent).

        Raises:
            RendezvousConnectionError, RendezvousStateError: as :meth:`join_round`.
        """
        return self._standing(self._round("close", node))

    def publish_bootstrap(self, node: str, round_: int, value: str) -> Standing:
        """Record rank 0's bootstrap ``value`` (str) for round ``round_`` (int): ``round.lua``
        op ``bootstrap``, one ``EVALSHA`` (``ZSCORE`` of the caller in
        ``rdzv:{R}:round:participants``, ``HSET rdzv:{R}:round boot``, ``PUBLISH
        rdzv:{R}:round:changed``). Only rank 0 of the current, complete round ``round_`` is
        heard, and only its first value (see
        :meth:`BootstrapRecord.publish_bootstrap <rdzv_core.backend.BootstrapRecord.publish_bootstrap>`).

        Raises:
            ValueError: ``value`` is empty or longer than ``MAX_BOOTSTRAP_CHARS``.
            RendezvousConnectionError, RendezvousStateError: as :meth:`join_round`.
        """
        return self._standing(self._round("bootstrap", node, None, str(round_), check_bootstrap(value)))

    def wait_for_round_change(self, seen: tuple[str, int] | None, timeout: float) -> bool:
        """Block until the membership's ``(incarnation, version)`` differs from ``seen``
        (``None``: no record) or ``timeout`` seconds pass (channel ``rdzv:{R}:round:changed``,
        whose messages carry ``"<inc>:<ver>"``).

        A waiter is registered with the client's pub/sub listener before anything is checked,
        so no announcement is missed. The check trusts the newest announcement the listener
        received in its current subscription (no round trip: an agent asks often, and
        ``timeout == 0`` then costs nothing); without one — not subscribed, nothing announced
        yet, or the listener reconnected (``resync``) — it reads ``HMGET rdzv:{R}:round inc
        ver`` (one request, bounded by the timeout), and a read made while subscribed stands
        in for an announcement until the next one (:meth:`Notifier.note`): after a server
        restart, a round that does not change again is not read on every check. A record
        lost without an announcement (``FLUSHALL``) is seen at the next read or operation,
        not here.

        Args:
            seen: The :attr:`Standing.change_id` the caller acted on.
            timeout: Seconds (float) to wait at most; ``0`` only checks.

        Returns:
            ``True`` on a change (spurious ``True`` allowed), ``False`` after ``timeout``.

        Raises:
            RendezvousConnectionError: the read failed until the timeout.
        """
        deadline = time.monotonic() + max(0.0, timeout)
        notifier, channel = self._client.notifier, self._keys.round_channel

        def changed(announced: bytes | None) -> bool:
            verdict = _round_differs(announced, seen)
            if verdict is not None:
                return verdict
            epoch = notifier.confirmed_epoch(channel)
            inc, ver = self._read_round_id(deadline)
            if epoch is not None and inc not in ("", "?"):
                notifier.note(channel, f"{inc}:{ver}".encode(), epoch)  # the next check needs no read
            return (inc, ver) != (seen or ("", 0))

        return self._wait_announced(channel, deadline, changed)

    def _read_round_id(self, deadline: float) -> tuple[str, int]:
        """``(inc, ver)`` of the record (``HMGET rdzv:{R}:round inc ver``), ``("", 0)``
        without one; a corrupt record differs from every id (the next operation reports it)."""
        inc, ver = self._client.call(
            "round id", lambda: self._client.redis.hmget(self._keys.round, "inc", "ver"), deadline=deadline
        )
        if inc is None:
            return "", 0
        try:
            return inc.decode(), int(ver)
        except (TypeError, ValueError, UnicodeDecodeError):
            return "?", -1

    def membership_state(self) -> RendezvousState | None:
        """The whole membership as a :class:`RendezvousState` (``MULTI``: ``HGETALL`` and three
        ``ZRANGE``; O(N) bytes, for ``rdzv status``), or ``None`` without a record."""

        def read() -> list[Any]:
            pipe = self._client.redis.pipeline(transaction=True)
            pipe.hgetall(self._keys.round)
            pipe.zrange(self._keys.participants, 0, -1, withscores=True)
            pipe.zrange(self._keys.wait_list, 0, -1)
            pipe.zrange(self._keys.redundancy_list, 0, -1)
            return pipe.execute()  # type: ignore[no-any-return]

        fields, participants, waiting, redundant = self._client.call("membership_state", read)
        if not fields:
            return None
        try:
            deadline = fields.get(b"deadline")
            int(fields[b"ver"]), int(fields[b"seq"]), fields[b"inc"].decode("ascii")  # all of it must be rdzv's
            return RendezvousState(
                run_id=self._run_id,
                round=int(fields[b"round"]),
                complete=fields[b"complete"] == b"1",
                closed=fields[b"closed"] == b"1",
                world_size=int(fields[b"world"]),
                deadline=None if deadline is None else int(deadline) / 1_000_000,
                participants={node.decode(): int(score) for node, score in participants},
                wait_list=[node.decode() for node in waiting],
                redundancy_list=[node.decode() for node in redundant],
                **_stored_spec(fields),
            )
        except (KeyError, ValueError, UnicodeDecodeError) as exc:
            raise RendezvousStateError(
                f"The membership of run '{self._run_id}' in Redis at {self._client.config.display} (key '{self._keys.round}') "
                f"is corrupt or was not written by rdzv: {type(exc).__name__}: {exc}."
            ) from None

    # -- helpers ------------------------------------------------------------------------------

    def _decode(self, raw: bytes) -> tuple[bytes, str]:
        """Split a stored value into ``(state, token)``.

        Raises:
            RendezvousStateError: it lacks the magic prefix, the newline or a valid token.
        """
        header, newline, state = raw.partition(b"\n")
        token = header[len(STATE_MAGIC) :].decode("ascii", "replace")
        if not newline or not header.startswith(STATE_MAGIC) or not _TOKEN_RE.match(token):
            raise RendezvousStateError(
                f"The rendezvous state of run '{self._run_id}' in Redis at {self._client.config.display} "
                f"(key '{self._keys.state}') is corrupt or was not written by rdzv: it starts with {raw[:24]!r}."
            )
        return state, token


def _stored_spec(fields: dict[bytes, bytes]) -> dict[str, Any]:
    """The bounds and last call (``min``, ``max``, ``lcall`` in us) kept in the round hash, as
    :class:`RendezvousState` fields; none when the hash lacks them.

    Raises:
        ValueError: a field is not a number.
    """
    if b"min" not in fields:
        return {}
    return {
        "min_nodes": int(fields[b"min"]),
        "max_nodes": int(fields[b"max"]),
        "last_call_timeout": int(fields[b"lcall"]) / 1_000_000,
    }


def _glob_escape(text: str) -> str:
    """``text`` as a literal in a Redis glob pattern (``SCAN MATCH``)."""
    return "".join("\\" + char if char in "*?[]\\" else char for char in text)


def _round_differs(announced: bytes | None, seen: tuple[str, int] | None) -> bool | None:
    """Compare an announced ``b"<inc>:<ver>"`` with ``seen``: ``True`` (changed), ``False``
    (the same, or older than what the caller already saw), ``None`` (cannot tell: ask)."""
    if announced is None:
        return None
    inc, _, ver = announced.decode("ascii", "replace").partition(":")
    if not ver.isdigit():
        return None
    seen_inc, seen_ver = seen or ("", 0)
    return inc != seen_inc or int(ver) > seen_ver


def _version(token: str) -> int:
    return int(token.partition("-")[0])


def _differs(announced: bytes | None, token: Token | None) -> bool | None:
    """Compare an announced token (a pub/sub payload) with the caller's token.

    Returns ``True`` (the state changed), ``False`` (the announced token is the caller's),
    or ``None`` when it cannot tell (nothing announced, or an older announcement still on
    its way while the caller already read a newer token): then the server is asked.
    """
    if announced is None:
        return None
    text = announced.decode("ascii", "replace")
    if token is None or text == token:
        return token is None
    if not (isinstance(token, str) and _TOKEN_RE.match(token) and _TOKEN_RE.match(text)):
        return True
    return True if _version(text) > _version(token) else None


def create_backend(params: RendezvousParameters, *, shared: bool = True) -> tuple[RedisRendezvousBackend, RedisStore]:
    """Create the backend and the store of ``params.run_id`` on the Redis of ``params``.

    Both share the process-wide client of the configuration (see :class:`RedisConfig` for the
    endpoint forms and keys); close both to release it. With ``shared=False`` they share a
    client of their own instead (one node = one client, as a benchmark's simulated node
    needs: its own pool and pub/sub connection). Unknown configuration keys are reported by
    the caller (:meth:`rdzv_core.plugin.BackendPlugin.open`).

    Raises:
        ValueError: bad endpoint or configuration value (names the key).
        RendezvousConnectionError: Redis unreachable within the retry budget, or
            authentication failed.
        ImportError: redis-py is missing (``pip install 'rdzv[redis]'``).
    """
    from rdzv_redis.store import RedisStore

    config = RedisConfig.from_params(params)
    # On Redis Cluster a client listens on the shard of one run: the run's slot names it.
    shard_key = RunKeys(params.run_id).state
    client = RedisClient.acquire(config, shard_key) if shared else RedisClient.create(config, shard_key)
    # key_ttl is not part of the client's identity: a shared client may come from a config
    # with another one, so each backend and store takes its own.
    backend = RedisRendezvousBackend(client, params.run_id, key_ttl=config.key_ttl, closed_ttl=config.closed_ttl)
    client.retain()  # the store holds its own reference
    return backend, RedisStore(client, params.run_id, key_ttl=config.key_ttl)
