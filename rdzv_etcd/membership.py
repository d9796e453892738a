""":class:`~rdzv_core.backend.AtomicMembership` on etcd v3 (through the JSON gateway).

etcd has no server-side scripting, so each operation of :mod:`rdzv_core.rounds` is built from
a few transactions whose *compare* makes them atomic, on per-node keys plus one small summary:

Keys (``<run>`` = :attr:`RunKeys.run_prefix`, ``<inc>`` the incarnation, ``<hex>`` the node
key's UTF-8 bytes in hex, which keeps the byte order, so etcd's key order is the sorted order
of the node keys the ranks follow)::

    <run>membership/summary           JSON: inc, ver, round, complete, closed, ws, deadline,
                                      cut, waiting, missing, boot (no lease: it must outlive
                                      quiet rounds; written only on summary transitions)
    <run>membership/alive/<ms>/<hex>  keep-alive record; <ms> is the time it lapses (client
                                      wall clock, ms, 15 digits), so key order is lapse order
    <run>membership/<inc>/p/<R>/<hex> a participant of round R
    <run>membership/<inc>/w/<R>/<hex> a wait-list entry made while round R was complete
    <run>membership/<inc>/r/<hex>     a redundancy-list entry

* **Keep-alive and sweep.** A keep-alive replaces the node's alive record (delete the old key,
  put the new one, inside the same transaction as its snapshot: no extra request; a node
  remembers its record's key, and every key it may have written when an outcome was
  unknown). The lapse time is in the key, so a sweep is the range ``[alive/, alive/<now>)``
  with a limit of :data:`SWEEP_BATCH` + 1: only lapsed records, already in lapse order, with no
  sort on the server — O(batch + log N) per sweep, whatever N — and it removes them soonest
  first in one transaction per batch (up to
  :data:`~rdzv_core.rounds.SWEEP_LIMIT` per call), each removal compared on the record's
  ``mod_revision`` so that a node that just kept alive, or a rival sweep, wins; it answers the
  nodes it took out of a list, as the reference does. Every key of a node is also bound to
  that node's own lease, TTL ``2 * dead_after + 2`` s, refreshed every third of it: a safety
  net that cleans up when nobody sweeps any more (every node died, or one paused that long).
* **Lists.** The participant count of round R is ``count(p/R/)``. The wait list of a complete
  round R is ``w/R/``, of an open round R ``w/R-1/`` (made while R-1 was complete): opening
  R keeps the wait list, completing R drops it — by changing prefix, without a write. Stale
  keys of a node are deleted by that node's next write (it remembers them) or with its lease.
* **Transactions.** Every write compares the summary's *value* (unique: random incarnation and
  a version that only grows, so a wiped-and-refilled server never matches a stale value) and,
  for a created key, ``create_revision == 0``; its success branch also returns this node's
  keys and the counts, so one request both applies and observes. Joins write only their own
  key: N concurrent joins all succeed (no CAS on a shared key).
* **Summary.** After every mutation the node *reconciles*: the summary flags are a function of
  the counts (:func:`_derive`: last call running iff open and ``count >= min_nodes``; complete
  when an open round holds exactly ``max_nodes``; the next round when a complete one has no
  participant left; ``waiting``/``missing``), and when they differ the node compare-and-sets the
  summary (version + 1) and checks the counts returned with it again. So the summary is written
  O(1) times per round, and a lost CAS means another node already made a transition.
* **Completion** records ``cut``, the revision at which the counts were read, and ``ws``, the
  count then: the round's members are exactly the participant keys that existed at ``cut``
  (``create_revision <= cut``). A key created after ``cut`` in an open round's prefix
  (a join that raced the completion) is *overflow*: its node is no participant and moves
  itself to the wait or redundancy list. A join whose own count exceeds ``max_nodes`` moves to
  the redundancy list at once (the round was full when it arrived), so an open round holds
  more than ``max_nodes`` keys only transiently. The rank of a member is the ``count_only``
  range ``[p/R/, p/R/<hex>)`` at revision ``cut``: every node computes the same ranks
  ``0..ws-1`` in sorted key order with one O(1) read, cached.
* **Bootstrap** (:class:`~rdzv_core.backend.BootstrapRecord`): rank 0 compare-and-sets ``boot``
  into the summary of its complete round (version + 1, so the watchers wake); it is cleared
  when a round completes or the next one opens.
* **Time.** etcd has no clock: deadlines and lapse times are the *client's* wall clock
  (``time.time()``), so hosts' clocks should agree within a fraction of ``last_call`` and
  ``dead_after``; only the safety-net leases run on the server's clock.
* **Notification.** :meth:`EtcdMembership.wait_for_round_change` reads the summary and watches
  it (:meth:`rdzv_etcd.v3.EtcdV3KV.watch`: back-off, compaction and data loss handled there).

Requests per operation (no operation reads other nodes' keys; bytes are O(1)):
``join_round`` 1 snapshot (with the keep-alive) + 1 write + 0..1 summary CAS (+1 on a client's
first call, +1 lease grant per node, +1 per lost compare, +1 lease refresh per ``ttl / 3``);
``keep_alive_round`` 1 (sweep: + 1 range of the lapsed records, + 1 transaction per batch of lapsed nodes,
+ a CAS on a transition); ``leave_round`` 1 snapshot + 1 write + 0..1 CAS;
``complete_round`` 1 snapshot + 0..1 CAS; ``publish_bootstrap`` 1 snapshot + 1 CAS;
``round_standing`` 1; ``wait_for_round_change`` 1 read + 1 watch.

Limits: lapse times and deadlines are client wall
clocks; the revision ``cut`` must not be compacted before every member read its rank (etcd
does not compact unless configured to; the error is a RendezvousStateError); a node that
crashes in the tiny window between an overfilling put and its move to the redundancy list
holds up the completion at ``max_nodes`` until it is swept (or the last call completes the
round); the lease TTL is the first ``dead_after`` a node used.
"""

from __future__ import annotations

import base64
import itertools
import json
import logging
import math
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from rdzv_core.api import RendezvousStateError
from rdzv_core.backend import Role, RoundSpec, Standing, check_bootstrap
from rdzv_core.rounds import SWEEP_LIMIT
from rdzv_core.state import RendezvousState
from rdzv_etcd.backend import EtcdRendezvousBackend, create_backend
from rdzv_etcd.client import DEFAULT_CLOSED_TTL, DEFAULT_KEY_TTL, OutcomeUnknownError
from rdzv_etcd.keys import DEFAULT_ROOT, RunKeys

__all__ = ["EtcdMembership", "EtcdMembershipBackend", "create_membership_backend"]

logger = logging.getLogger(__name__)

#: Attempts of one operation's loop (each a snapshot/write/CAS); a loop that needs more under
#: heavy churn answers the last snapshot's standing (a spurious answer the caller re-checks).
MAX_ATTEMPTS = 32
#: Lapsed nodes removed per sweep transaction (4 deletes and 1 compare each: under etcd's
#: default 128 operations per transaction).
SWEEP_BATCH = 20

_EMPTY = Standing("", 0, 0, False, False, Role.NONE, None, 0, 0, 0, 0, None)


class _LeaseLost(Exception):
    """etcd does not know the lease a write used (it lapsed, or the server lost its data)."""


def _b64(text: str | bytes) -> str:
    return base64.b64encode(text.encode("utf-8") if isinstance(text, str) else text).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text or "")


def _end(prefix: str) -> str:
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


def _spec_entry(spec: RoundSpec | None) -> dict[str, Any]:
    """The summary entry ``spec``: ``[min_nodes, max_nodes, last call (s)]`` (for status)."""
    return {} if spec is None else {"spec": [spec.min_nodes, spec.max_nodes, spec.last_call]}


def _stored_spec(s: dict[str, Any]) -> dict[str, Any]:
    """The :class:`RendezvousState` fields of the summary's ``spec`` entry (none without one)."""
    entry = s.get("spec")
    if not (isinstance(entry, list) and len(entry) == 3 and all(isinstance(x, (int, float)) for x in entry)):
        return {}
    return {"min_nodes": int(entry[0]), "max_nodes": int(entry[1]), "last_call_timeout": float(entry[2])}


def _flags(s: dict[str, Any]) -> tuple[Any, ...]:
    """:func:`rdzv_core.rounds.summary` of a stored summary."""
    return (
        s["round"],
        s["complete"],
        s["closed"],
        s["deadline"] is not None,
        s["waiting"],
        s["missing"],
        s.get("boot") is not None,
    )


@dataclass
class _Snap:
    """What one transaction showed: the summary and this node's keys and the counts, all at
    revision ``rev`` (``raw`` is the summary's stored value, the compare of the next write)."""

    raw: bytes | None
    s: dict[str, Any] | None
    rev: int = 0
    mine: dict[str, tuple[str, int]] = field(default_factory=dict)  # kind -> (key, create_revision)
    count_p: int = 0
    count_w: int = 0
    count_r: int = 0
    rank: int | None = None  # keys sorted before this node's at ``cut`` (complete rounds)
    written: list[dict[str, Any]] = field(default_factory=list)  # the responses of the writes


class EtcdMembership:
    """:class:`~rdzv_core.backend.AtomicMembership` of one run on etcd v3 (see the module docs).

    Args:
        kv: The etcd v3 adapter (:class:`~rdzv_etcd.v3.EtcdV3KV`), shared or not.
        run_id: The run id (str, not empty).
        root: Root of the key layout (``/rdzv``).
        closed_ttl: Seconds (int) the summary of a closed rendezvous lives (a lease).

    Thread-safe; one instance may serve several nodes (each gets its own lease). Every method
    may raise :class:`~rdzv_core.api.RendezvousConnectionError`; a summary that rdzv did not
    write raises :class:`~rdzv_core.api.RendezvousStateError`.
    """

    def __init__(self, kv: Any, run_id: str, *, root: str = DEFAULT_ROOT, closed_ttl: int = DEFAULT_CLOSED_TTL) -> None:
        if getattr(kv, "api", None) != "v3":
            raise ValueError("EtcdMembership needs the etcd v3 adapter (rdzv_etcd.v3.EtcdV3KV).")
        self._kv = kv
        self.run_id = run_id
        self._keys = RunKeys(run_id, root)
        self._closed_ttl = closed_ttl
        self._base = self._keys.run_prefix + "membership/"
        self.summary_key = self._base + "summary"
        self._lock = threading.Lock()
        self._raw: bytes | None = None  # the summary value last seen (compare of the next txn)
        self._leases: dict[str, tuple[int, int, float]] = {}  # node -> (lease, ttl, refreshed at)
        self._mine: dict[str, set[str]] = {}  # node -> keys it wrote (to delete stale ones)
        self._alive_of: dict[str, set[str]] = {}  # node -> alive records that may exist
        self._ranks: dict[tuple[str, int, int, str], int] = {}
        self._counter = itertools.count()
        #: Requests sent so far (tests count them).
        self.requests = 0

    @property
    def kv(self) -> Any:
        return self._kv

    def __repr__(self) -> str:
        return f"EtcdMembership({self._kv.endpoint}, key={self.summary_key!r})"

    # -- keys -----------------------------------------------------------------------------

    def _p_prefix(self, s: dict[str, Any], round_: int | None = None) -> str:
        return f"{self._base}{s['inc']}/p/{s['round'] if round_ is None else round_}/"

    def _w_prefix(self, s: dict[str, Any]) -> str | None:
        """The live wait list: made while this round (complete) or the previous one was complete."""
        tag = s["round"] if s["complete"] else s["round"] - 1
        return None if tag < 0 else f"{self._base}{s['inc']}/w/{tag}/"

    def _r_prefix(self, s: dict[str, Any]) -> str:
        return f"{self._base}{s['inc']}/r/"

    @staticmethod
    def _seg(node: str) -> str:
        if not node:
            raise ValueError("The node key must not be empty.")
        return node.encode("utf-8").hex()

    # -- requests -------------------------------------------------------------------------

    def _request(self, path: str, payload: dict[str, Any], *, write: bool = False) -> dict[str, Any]:
        kv = self._kv

        def op(client: Any) -> dict[str, Any]:
            try:
                return kv._post(client, path, payload)
            except kv._exceptions.Etcd3Exception as exc:
                detail = exc.detail_text or ""
                if "lease not found" in detail:
                    raise _LeaseLost() from None
                if "compacted" in detail:
                    raise RendezvousStateError(
                        f"etcd compacted the revision at which round membership was fixed ({detail[:200]}); the ranks cannot be read."
                    ) from None
                raise

        with self._lock:
            self.requests += 1
        return kv._call(f"membership {path}", op, idempotent=not write)

    def _parse(self, raw: bytes | None) -> dict[str, Any] | None:
        if raw is None:
            return None
        try:
            s = json.loads(raw)
            if not isinstance(s, dict) or not isinstance(s.get("inc"), str) or not isinstance(s.get("ver"), int):
                raise ValueError
            _flags(s)
            return s
        except (ValueError, KeyError, TypeError):
            raise RendezvousStateError(
                f"The etcd key '{self.summary_key}' holds no membership summary rdzv wrote: {raw[:60]!r}."
            ) from None

    def _summary_compare(self, raw: bytes | None) -> dict[str, Any]:
        if raw is None:
            return {"key": _b64(self.summary_key), "target": "CREATE", "result": "EQUAL", "create_revision": "0"}
        return {"key": _b64(self.summary_key), "target": "VALUE", "result": "EQUAL", "value": _b64(raw)}

    def _reads(self, s: dict[str, Any] | None, node: str) -> list[tuple[str, dict[str, Any]]]:
        """The reads of a snapshot of ``node`` under summary ``s``: (what, range request)."""
        if s is None:
            return []
        seg = self._seg(node)
        p, w, r = self._p_prefix(s), self._w_prefix(s), self._r_prefix(s)
        reads: list[tuple[str, dict[str, Any]]] = [("p", {"key": _b64(p + seg)}), ("r", {"key": _b64(r + seg)})]
        if w is not None:
            reads.append(("w", {"key": _b64(w + seg)}))
            reads.append(("count_w", {"key": _b64(w), "range_end": _b64(_end(w)), "count_only": True}))
        reads.append(("count_p", {"key": _b64(p), "range_end": _b64(_end(p)), "count_only": True}))
        reads.append(("count_r", {"key": _b64(r), "range_end": _b64(_end(r)), "count_only": True}))
        if s["complete"] and s["cut"] and self._cached_rank(s, node) is None:
            reads.append(
                ("rank", {"key": _b64(p), "range_end": _b64(p + seg), "count_only": True, "revision": str(s["cut"])})
            )
        return reads

    def _cached_rank(self, s: dict[str, Any], node: str) -> int | None:
        with self._lock:
            return self._ranks.get((s["inc"], s["round"], s["cut"], node))

    def _txn(
        self,
        raw: bytes | None,
        node: str,
        writes: list[dict[str, Any]],
        *,
        put_summary: bytes | None = None,
        absent: tuple[str, ...] = (),
        alive: RoundSpec | None = None,
        compare: tuple[dict[str, Any], ...] = (),
    ) -> _Snap | None:
        """One transaction: compare the summary against ``raw`` (and ``absent`` keys absent);
        on success apply ``writes`` (and the new summary) and read the node's snapshot under
        the summary then in force; on failure read the summary (cached) and return ``None``.
        ``alive``: also record a keep-alive of ``node`` (when the record exists)."""
        s_after = self._parse(put_summary) if put_summary is not None else self._parse(raw)
        ops = list(writes)
        new_alive = None
        if alive is not None and s_after is not None:
            new_alive, alive_ops = self._alive_ops(node, alive)
            ops += alive_ops
        if put_summary is not None:
            put = {"key": _b64(self.summary_key), "value": _b64(put_summary)}
            if s_after is not None and s_after["closed"]:  # a closed record expires (closed_ttl)
                put["lease"] = str(self._grant_closed())
            ops.append({"request_put": put})
        reads = self._reads(s_after, node)
        compares = [self._summary_compare(raw), *compare]
        compares += [
            {"key": _b64(key), "target": "CREATE", "result": "EQUAL", "create_revision": "0"} for key in absent
        ]
        payload = {
            "compare": compares,
            "success": ops + [{"request_range": req} for _, req in reads],
            "failure": [{"request_range": {"key": _b64(self.summary_key)}}],
        }
        response = self._request("kv/txn", payload, write=bool(ops))  # unknown outcome: new_alive stays a candidate
        responses = response.get("responses", [])
        if new_alive is not None:
            with self._lock:
                if response.get("succeeded"):
                    self._alive_of[node] = {new_alive}
                else:
                    self._alive_of.get(node, set()).discard(new_alive)
        if not response.get("succeeded"):
            kvs = responses[0].get("response_range", {}).get("kvs", []) if responses else []
            current = _unb64(kvs[0].get("value", "")) if kvs else None
            self._parse(current)  # raises on a foreign value
            with self._lock:
                self._raw = current
            return None
        new_raw = put_summary if put_summary is not None else raw
        with self._lock:
            self._raw = new_raw
        snap = _Snap(new_raw, s_after, int(response["header"]["revision"]), written=responses[: len(writes)])
        for (what, req), item in zip(reads, responses[len(ops) :], strict=True):
            rr = item.get("response_range", {})
            if what.startswith("count_") or what == "rank":
                value = int(rr.get("count", 0))
                if what == "rank":
                    snap.rank = value
                else:
                    setattr(snap, what, value)
            elif rr.get("kvs"):
                snap.mine[what] = (_unb64(req["key"]).decode("utf-8"), int(rr["kvs"][0]["create_revision"]))
        if s_after is not None and s_after["complete"]:
            key = (s_after["inc"], s_after["round"], s_after["cut"], node)
            with self._lock:
                if snap.rank is not None and self._is_member(snap):
                    self._ranks[key] = snap.rank
                elif snap.rank is None:
                    snap.rank = self._ranks.get(key)
        return snap

    def _snapshot(self, node: str, alive: RoundSpec | None = None) -> _Snap:
        for _ in range(MAX_ATTEMPTS):
            with self._lock:
                raw = self._raw
            try:
                snap = self._txn(raw, node, [], alive=alive)
            except OutcomeUnknownError:
                continue  # the keep-alive put may or may not have landed: put it again
            except _LeaseLost:
                self._grant(node, alive or RoundSpec(1, 1, 0.0, 1.0))
                continue
            if snap is not None:
                return snap
        raise RendezvousStateError("The membership summary changed on every read; giving up.")

    def _create(self, spec: RoundSpec | None = None) -> None:
        value = json.dumps(
            {
                **_spec_entry(spec),
                "inc": secrets.token_hex(8),
                "ver": 1,
                "round": 0,
                "complete": False,
                "closed": False,
                "ws": 0,
                "deadline": None,
                "cut": None,
                "waiting": False,
                "missing": False,
            },
            separators=(",", ":"),
        ).encode()
        try:
            self._txn(None, "-", [], put_summary=value)
        except OutcomeUnknownError:
            pass  # the next snapshot tells

    # -- leases ---------------------------------------------------------------------------

    @staticmethod
    def _lease_ttl(spec: RoundSpec) -> int:
        """The safety-net lease: well past ``dead_after``, so that a sweep normally removes (and
        names) a lapsed node first; it cleans up when nobody sweeps (every node died)."""
        return max(2, math.ceil(2 * spec.dead_after) + 2)

    def _refresh_lease(self, node: str, spec: RoundSpec) -> None:
        """Refresh ``node``'s lease when a third of its TTL passed since the last refresh (one
        request then); grant a new one when it lapsed (its keys are gone with it)."""
        with self._lock:
            entry = self._leases.get(node)
        if entry is None:
            return  # granted with the first key this node writes
        lease, ttl, refreshed = entry
        if time.monotonic() - refreshed < ttl / 3:
            return
        result = self._request("lease/keepalive", {"ID": str(lease)}).get("result", {})
        if int(result.get("TTL", -1) or -1) > 0:
            with self._lock:
                self._leases[node] = (lease, ttl, time.monotonic())
        else:
            self._grant(node, spec)

    def _grant(self, node: str, spec: RoundSpec) -> int:
        ttl = self._lease_ttl(spec)
        lease = int(self._request("lease/grant", {"TTL": str(ttl), "ID": "0"})["ID"])
        with self._lock:
            self._leases[node] = (lease, ttl, time.monotonic())
            self._mine.pop(node, None)
        return lease

    def _grant_closed(self) -> int:
        """A fresh lease of ``closed_ttl`` seconds for the summary of a closed rendezvous
        (every write of it renews the expiry, as on Redis)."""
        return int(self._request("lease/grant", {"TTL": str(self._closed_ttl), "ID": "0"})["ID"])

    def _lease(self, node: str, spec: RoundSpec) -> int:
        with self._lock:
            entry = self._leases.get(node)
        return entry[0] if entry is not None else self._grant(node, spec)

    @property
    def _alive_prefix(self) -> str:
        return self._base + "alive/"

    def _alive_ops(self, node: str, spec: RoundSpec) -> tuple[str, list[dict[str, Any]]]:
        """``(new key, ops)``: delete the node's alive records that may exist and put the new
        one, ``alive/<lapse ms, 15 digits>/<hex>`` (client wall clock; the key order is the
        lapse order). The new key is a candidate from now on (in case the outcome is
        unknown); :meth:`_txn` settles it."""
        until = f"{round((time.time() + spec.dead_after) * 1000):015d}"
        key = f"{self._alive_prefix}{until}/{self._seg(node)}"
        with self._lock:
            known = self._alive_of.setdefault(node, set())
            old = sorted(known - {key})
            known.add(key)
        ops: list[dict[str, Any]] = [{"request_delete_range": {"key": _b64(k)}} for k in old]
        ops.append({"request_put": {"key": _b64(key), "value": _b64(until), "lease": str(self._lease(node, spec))}})
        return key, ops

    def _sweep(self, node: str, spec: RoundSpec, snap: _Snap) -> tuple[_Snap, list[str]]:
        """Remove the nodes whose keep-alive record lapsed, soonest first, ``SWEEP_BATCH`` per
        transaction and at most ``SWEEP_LIMIT`` per call: the range ``[alive/, alive/<now>)``
        holds exactly the lapsed records, in lapse order (no sort, O(batch) bytes); each
        removal compares the record's ``mod_revision`` (a node that just kept alive replaced
        the record, or a rival sweep took it: either wins)."""
        removed: list[str] = []
        prefix = self._alive_prefix
        mine = "/" + self._seg(node)
        for _ in range(math.ceil(SWEEP_LIMIT / SWEEP_BATCH)):
            s = snap.s
            if s is None:
                break
            now = f"{prefix}{math.floor(time.time() * 1000):015d}"
            request = {"key": _b64(prefix), "range_end": _b64(now), "limit": str(SWEEP_BATCH + 1)}
            lapsed = []
            for item in self._request("kv/range", request).get("kvs", []):
                key = _unb64(item["key"]).decode("utf-8")
                if not key.endswith(mine):
                    lapsed.append((key, int(item["mod_revision"])))
            lapsed = lapsed[:SWEEP_BATCH]
            if not lapsed:
                break
            writes, compare, who = [], [], []
            for key, mod in lapsed:
                try:
                    other = bytes.fromhex(key[len(prefix) :].partition("/")[2]).decode("utf-8")
                except ValueError:
                    continue  # not a record rdzv wrote: leave it to its lease
                seg = self._seg(other)
                wait = self._w_prefix(s)
                lists = [self._p_prefix(s) + seg, self._r_prefix(s) + seg] + ([wait + seg] if wait else [])
                compare.append({"key": _b64(key), "target": "MOD", "result": "EQUAL", "mod_revision": str(mod)})
                writes.append({"request_delete_range": {"key": _b64(key)}})
                writes += [{"request_delete_range": {"key": _b64(k)}} for k in lists]
                who.append((other, len(lists)))
            try:
                result = self._txn(snap.raw, node, writes, compare=tuple(compare))
            except OutcomeUnknownError:
                result = None
            if result is None:
                snap = self._snapshot(node)
                continue
            snap, index = result, 0
            for other, count in who:
                deleted = [
                    int(r.get("response_delete_range", {}).get("deleted", 0) or 0)
                    for r in snap.written[index + 1 : index + 1 + count]
                ]
                index += 1 + count
                if any(deleted):
                    removed.append(other)
            if len(lapsed) < SWEEP_BATCH:
                break
        return snap, removed

    # -- the protocol ---------------------------------------------------------------------

    def _is_member(self, snap: _Snap) -> bool:
        s = snap.s
        p = snap.mine.get("p")
        if s is None or p is None:
            return False
        return not s["complete"] or (s["cut"] is not None and p[1] <= s["cut"])

    def _role(self, snap: _Snap) -> tuple[Role, bool]:
        """``(role, overflow)``: overflow = a participant key created after the cut."""
        if snap.s is None:
            return Role.NONE, False
        if "p" in snap.mine:
            return (Role.PARTICIPANT, False) if self._is_member(snap) else (Role.NONE, True)
        if "w" in snap.mine:
            return Role.WAITING, False
        if "r" in snap.mine:
            return Role.REDUNDANT, False
        return Role.NONE, False

    def _standing(self, snap: _Snap, left_redundancy: bool = False) -> Standing:
        s = snap.s
        if s is None:
            return _EMPTY
        role, overflow = self._role(snap)
        rank = snap.rank if role is Role.PARTICIPANT and s["complete"] else None
        deadline_in = None if s["deadline"] is None else max(0.0, s["deadline"] - time.time())
        return Standing(
            s["inc"], s["ver"], s["round"], s["complete"], s["closed"], role, rank, s["ws"],
            max(0, snap.count_p - overflow), snap.count_w, snap.count_r, deadline_in, left_redundancy,
            s.get("boot") if s["complete"] else None,
        )  # fmt: skip

    def _derive(self, snap: _Snap, spec: RoundSpec) -> dict[str, Any] | None:
        """The summary the counts of ``snap`` call for, or ``None`` when it stands."""
        assert snap.s is not None
        s, n = snap.s, dict(snap.s)
        count = snap.count_p
        if not s["complete"]:
            if not s["closed"] and spec.min_nodes <= count == spec.max_nodes:
                n.update(complete=True, cut=snap.rev, ws=count, deadline=None, waiting=False, missing=False, boot=None)
            else:
                if count >= spec.min_nodes and s["deadline"] is None and not s["closed"]:
                    n["deadline"] = time.time() + spec.last_call
                elif count < spec.min_nodes and s["deadline"] is not None:
                    n["deadline"] = None
                n["waiting"] = snap.count_w > 0
        elif count == 0:  # the last participant of a complete round left: the next opens
            n.update(round=s["round"] + 1, complete=False, ws=0, cut=None, deadline=None, missing=False, boot=None)
            n["waiting"] = snap.count_w > 0  # the wait list of round R stays live in R + 1
        else:
            n["missing"] = count < s["ws"]
            n["waiting"] = snap.count_w > 0
        if _flags(n) == _flags(s):
            return None
        n["ver"] = s["ver"] + 1
        n.update(_spec_entry(spec))  # rides along with a transition (never written alone)
        return n

    def _reconcile(self, node: str, spec: RoundSpec, snap: _Snap) -> _Snap:
        """Compare-and-set the summary until it matches the counts seen with it."""
        for _ in range(MAX_ATTEMPTS):
            if snap.s is None:
                return snap
            new = self._derive(snap, spec)
            if new is None:
                return snap
            snap = self._put_summary(snap, node, new)
        return snap

    def _put_summary(self, snap: _Snap, node: str, new: dict[str, Any]) -> _Snap:
        """Compare-and-set the summary to ``new`` under ``snap``'s; the snapshot after it (a
        fresh one when the compare failed or the outcome is unknown)."""
        try:
            result = self._txn(snap.raw, node, [], put_summary=json.dumps(new, separators=(",", ":")).encode())
        except OutcomeUnknownError:
            result = None
        return result if result is not None else self._snapshot(node)

    def _write(self, node: str, spec: RoundSpec, snap: _Snap, target: str | None) -> _Snap | None:
        """Put ``node``'s key ``target`` (``None``: none) and delete its other keys, under
        ``snap``'s summary. ``None`` when the compare failed (re-snapshot)."""
        with self._lock:
            stale = set(self._mine.get(node, ()))
        stale |= {key for key, _ in snap.mine.values()}
        stale.discard(target) if target else None
        writes: list[dict[str, Any]] = [{"request_delete_range": {"key": _b64(key)}} for key in sorted(stale)]
        absent: tuple[str, ...] = ()
        if target is not None:
            present = any(key == target for key, _ in snap.mine.values())
            if not present:
                lease = self._lease(node, spec)
                writes.append({"request_put": {"key": _b64(target), "value": _b64(node), "lease": str(lease)}})
                absent = (target,)
        if not writes:
            return snap
        try:
            result = self._txn(snap.raw, node, writes, absent=absent)
        except OutcomeUnknownError:
            return None
        except _LeaseLost:
            self._grant(node, spec)
            return None
        if result is not None:
            with self._lock:
                self._mine[node] = {target} if target else set()
        return result

    # -- AtomicMembership -----------------------------------------------------------------

    def join_round(self, node: str, spec: RoundSpec) -> Standing:
        self._refresh_lease(node, spec)
        snap = self._snapshot(node, alive=spec)
        started_redundant: bool | None = None
        overflowed: tuple[str, int] | None = None  # the open round this node's put overfilled
        for _ in range(MAX_ATTEMPTS):
            if snap.s is None:
                self._create(spec)
                snap = self._snapshot(node, alive=spec)
                continue
            s = snap.s
            role, overflow = self._role(snap)
            if started_redundant is None:
                started_redundant = role is Role.REDUNDANT
            left = bool(started_redundant) and role is not Role.REDUNDANT
            if s["closed"]:
                return self._standing(snap, left)
            members = snap.count_p - overflow
            seg = self._seg(node)
            if role is Role.PARTICIPANT and not s["complete"] and overflowed == (s["inc"], s["round"]):
                # The round was full when this node's key landed: to the redundancy list (the
                # move is retried when a summary change made its compare fail).
                moved = self._write(node, spec, snap, self._r_prefix(s) + seg)
                snap = self._reconcile(node, spec, moved) if moved is not None else self._snapshot(node)
                continue
            if role is Role.REDUNDANT and members >= spec.max_nodes:
                return self._standing(snap, False)
            if role is Role.PARTICIPANT or (role is Role.WAITING and s["complete"] and members < spec.max_nodes):
                after = self._reconcile(node, spec, snap)
                if self._role(after)[0] is role and after.s is not None and after.s["round"] == s["round"]:
                    return self._standing(after, left)
                snap = after
                continue
            if not s["complete"]:
                target = self._p_prefix(s) + seg
            elif members < spec.max_nodes:
                target = (self._w_prefix(s) or "") + seg
            else:
                target = self._r_prefix(s) + seg
            result = self._write(node, spec, snap, target)
            if result is None:
                snap = self._snapshot(node)
                continue
            snap = result
            if not s["complete"] and snap.count_p > spec.max_nodes:
                overflowed = (s["inc"], s["round"])
                continue  # moves at the top of the loop
            snap = self._reconcile(node, spec, snap)
        return self._standing(snap, bool(started_redundant) and self._role(snap)[0] is not Role.REDUNDANT)

    def leave_round(self, node: str, spec: RoundSpec) -> Standing:
        snap = self._snapshot(node)
        for _ in range(MAX_ATTEMPTS):
            if snap.s is None:
                return _EMPTY
            result = self._write(node, spec, snap, None)
            if result is not None:
                return self._standing(self._reconcile(node, spec, result))
            snap = self._snapshot(node)
        return self._standing(snap)

    def complete_round(self, node: str, spec: RoundSpec, round_: int) -> Standing:
        snap = self._snapshot(node)
        for _ in range(MAX_ATTEMPTS):
            s = snap.s
            if s is None:
                return _EMPTY
            ready = (
                s["round"] == round_ and not s["complete"] and not s["closed"] and s["deadline"] is not None
                and time.time() >= s["deadline"] and spec.min_nodes <= snap.count_p <= spec.max_nodes
            )  # fmt: skip
            if not ready:
                break
            # on success the next pass sees the round complete and stops
            snap = self._put_summary(
                snap,
                node,
                dict(
                    s,
                    complete=True,
                    cut=snap.rev,
                    ws=snap.count_p,
                    deadline=None,
                    waiting=False,
                    missing=False,
                    boot=None,
                    ver=s["ver"] + 1,
                ),
            )
        return self._standing(self._reconcile(node, spec, snap))

    def keep_alive_round(self, node: str, spec: RoundSpec, sweep: bool) -> tuple[Standing, list[str]]:
        self._refresh_lease(node, spec)
        snap = self._snapshot(node, alive=spec)
        if snap.s is None:
            return _EMPTY, []
        removed: list[str] = []
        if sweep:
            snap, removed = self._sweep(node, spec, snap)
            snap = self._reconcile(node, spec, snap)
        return self._standing(snap), removed

    def round_standing(self, node: str) -> Standing:
        return self._standing(self._snapshot(node))

    def close_rendezvous(self, node: str) -> Standing:
        snap = self._snapshot(node)
        for _ in range(MAX_ATTEMPTS):
            if snap.s is None:
                self._create()
                snap = self._snapshot(node)
                continue
            if snap.s["closed"]:
                break
            snap = self._put_summary(snap, node, dict(snap.s, closed=True, ver=snap.s["ver"] + 1))
        return self._standing(snap)

    def publish_bootstrap(self, node: str, round_: int, value: str) -> Standing:
        """Record rank 0's bootstrap ``value`` in the summary of its complete round ``round_``
        (a compare-and-set; see :meth:`BootstrapRecord.publish_bootstrap
        <rdzv_core.backend.BootstrapRecord.publish_bootstrap>`).

        Raises:
            ValueError: ``value`` is empty or too long.
        """
        check_bootstrap(value)
        snap = self._snapshot(node)
        for _ in range(MAX_ATTEMPTS):
            s = snap.s
            if s is None or s["round"] != round_ or not s["complete"] or s.get("boot") is not None:
                break
            standing = self._standing(snap)
            if standing.role is not Role.PARTICIPANT or standing.rank != 0:
                break
            snap = self._put_summary(snap, node, dict(s, boot=value, ver=s["ver"] + 1))
        return self._standing(snap)

    def wait_for_round_change(self, seen: tuple[str, int] | None, timeout: float) -> bool:
        values, revision = self._kv.get_many([self.summary_key])
        with self._lock:
            self.requests += 1
        stored = values.get(self.summary_key)
        s = self._parse(stored.value if stored else None)
        current = ("", 0) if s is None else (s["inc"], s["ver"])
        if current != tuple(seen or ("", 0)) or timeout <= 0:
            return current != tuple(seen or ("", 0))
        with self._lock:
            self.requests += 1
        return self._kv.watch(self.summary_key, revision + 1, timeout)

    def membership_state(self) -> RendezvousState | None:
        """The whole record (O(N) bytes, for ``rdzv status``)."""
        response = self._request("kv/range", {"key": _b64(self.summary_key)})
        kvs = response.get("kvs", [])
        s = self._parse(_unb64(kvs[0].get("value", "")) if kvs else None)
        if s is None:
            return None
        p = self._p_prefix(s)

        def listing(prefix: str, revision: int | None = None) -> list[tuple[str, int]]:
            request: dict[str, Any] = {"key": _b64(prefix), "range_end": _b64(_end(prefix)), "keys_only": True}
            if revision:
                request["revision"] = str(revision)
            items = self._request("kv/range", request).get("kvs", [])
            nodes = [
                (bytes.fromhex(_unb64(i["key"]).decode()[len(prefix) :]).decode("utf-8"), int(i["create_revision"]))
                for i in items
            ]
            return sorted(nodes, key=lambda item: item[1])

        current = listing(p)
        if s["complete"]:
            at_cut = sorted(node for node, _ in listing(p, s["cut"]))
            ranks = {node: rank for rank, node in enumerate(at_cut)}
            participants = {node: ranks[node] for node, created in current if created <= s["cut"] and node in ranks}
        else:
            participants = {node: 0 for node, _ in current}
        w = self._w_prefix(s)
        return RendezvousState(
            run_id=self.run_id,
            round=s["round"],
            complete=s["complete"],
            closed=s["closed"],
            world_size=s["ws"],
            deadline=s["deadline"],
            participants=participants,
            wait_list=[node for node, _ in listing(w)] if w else [],
            redundancy_list=[node for node, _ in listing(self._r_prefix(s))],
            **_stored_spec(s),
        )

    def close(self) -> None:
        """Release the connections (the adapter reconnects on its next call)."""
        self._kv.close()


class EtcdMembershipBackend(EtcdRendezvousBackend):
    """The ``etcd-v3`` backend with :class:`~rdzv_core.backend.AtomicMembership`: the state,
    liveness and join-queue methods of :class:`~rdzv_etcd.backend.EtcdRendezvousBackend`, and
    the membership methods of an :class:`EtcdMembership` on the same adapter (the handler
    prefers them). Build it with :func:`create_membership_backend`.
    """

    def __init__(self, kv: Any, run_id: str, *, key_ttl: int = DEFAULT_KEY_TTL, root: str = DEFAULT_ROOT) -> None:
        super().__init__(kv, run_id, key_ttl=key_ttl, root=root)
        self.membership = EtcdMembership(kv, run_id, root=root, closed_ttl=kv.config.closed_ttl)

    def join_round(self, node: str, spec: RoundSpec) -> Standing:
        return self.membership.join_round(node, spec)

    def leave_round(self, node: str, spec: RoundSpec) -> Standing:
        return self.membership.leave_round(node, spec)

    def complete_round(self, node: str, spec: RoundSpec, round_: int) -> Standing:
        return self.membership.complete_round(node, spec, round_)

    def keep_alive_round(self, node: str, spec: RoundSpec, sweep: bool) -> tuple[Standing, list[str]]:
        return self.membership.keep_alive_round(node, spec, sweep)

    def round_standing(self, node: str) -> Standing:
        return self.membership.round_standing(node)

    def close_rendezvous(self, node: str) -> Standing:
        return self.membership.close_rendezvous(node)

    def publish_bootstrap(self, node: str, round_: int, value: str) -> Standing:
        return self.membership.publish_bootstrap(node, round_, value)

    def wait_for_round_change(self, seen: tuple[str, int] | None, timeout: float) -> bool:
        return self.membership.wait_for_round_change(seen, timeout)

    def membership_state(self) -> RendezvousState | None:
        return self.membership.membership_state()


def create_membership_backend(params: Any) -> tuple[EtcdMembershipBackend, Any]:
    """Like :func:`rdzv_etcd.backend.create_backend` for ``etcd-v3``, with the membership
    capability: ``(backend, store)`` sharing one adapter (one client per call)."""
    plain, store = create_backend(params, api="v3")
    return EtcdMembershipBackend(plain.kv, params.run_id, key_ttl=plain.kv.config.key_ttl), store
