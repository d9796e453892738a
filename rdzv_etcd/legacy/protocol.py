"""torch's legacy etcd rendezvous protocol (``EtcdRendezvous``), written from its behaviour.

All of a run lives under ``<prefix>/run_<id>/`` (``prefix`` = ``/torchelastic/p2p``), a
sub-tree with a TTL of two hours that every node renews while it runs:

=================================  =====================================================
``rdzv/version_counter``           the last version number handed out (``"0"`` at first)
``rdzv/active_version``            the state of the current version (JSON, below)
``rdzv/v_<version>/rank_<rank>``   a member's keep-alive key (TTL 10 s, renewed at 5 s)
``rdzv/v_<version>/kv/``           the round's store (see :mod:`.store`)
=================================  =====================================================

The state goes ``setup`` -> ``joinable`` -> ``frozen`` -> ``final`` (or ``closed``)::

    {"status": "setup"}                                        TTL 5 s: the creator counts
    {"status": "joinable", "version": "3", "participants": [0, 1]}
                                        no TTL below min_nodes, then 10 s renewed by the
                                        last-call node (rank min_nodes - 1)
    {"status": "frozen", ..., "keep_alives": [<rank keys>]}    TTL 10 s, renewed by every
                                                               confirmation
    {"status": "final", ..., "num_workers_waiting": 0}         no TTL
    {"status": "closed", ...}

A node joins a ``joinable`` state by appending its rank (the number of participants so far)
with compare-and-swap; the state freezes at ``max_nodes``, or when the last-call node's
``last_call_timeout`` passes. Then each member writes its keep-alive key and adds it to
``keep_alives``; the last one makes the state ``final``. A node that finds a ``final`` state
adds one to ``num_workers_waiting`` (the members' agents see it through
:meth:`num_nodes_waiting` and re-rendezvous, which stops their keep-alives) and watches the
run until a member's keep-alive key is gone; then it deletes the state (compare-and-delete)
and everyone starts the next version. A state whose TTL lapses (its node died mid-way) is
gone the same way. Versions are decimal strings, ranks ints, as torch writes them.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from typing import Any, NamedTuple

from rdzv_core.api import RendezvousClosedError, RendezvousError, RendezvousStateError, RendezvousTimeoutError
from rdzv_etcd.client import OutcomeUnknownError
from rdzv_etcd.legacy.settings import LegacySettings
from rdzv_etcd.legacy.store import LegacyEtcdStore
from rdzv_etcd.legacy.transport import LegacyTransport, Node

__all__ = ["EtcdRendezvous", "EtcdRendezvousRetryableFailure", "EtcdRendezvousRetryImmediately"]

logger = logging.getLogger(__name__)

#: Seconds between two attempts after a retryable failure (torch's pause).
RETRY_PAUSE = 1.0
#: Upper bound of the random pause after a lost compare-and-swap (torch's ``cas_delay``).
CAS_DELAY = 0.1
#: Seconds ``set_closed`` keeps trying.
CLOSE_TIMEOUT = 30.0
#: Seconds ``stop`` waits for a renewal thread.
STOP_TIMEOUT = 5.0


class EtcdRendezvousRetryableFailure(Exception):
    """Internal signal: the state moved on in a way that needs a fresh start after a pause."""


class EtcdRendezvousRetryImmediately(Exception):
    """Internal signal: start again at once (a new version is, or will be, joinable)."""


class _Active(NamedTuple):
    """``active_version`` as read: the node, its decoded state, and the revision to watch from."""

    node: Node
    state: dict[str, Any]
    revision: int

    @property
    def status(self) -> str:
        return str(self.state["status"])

    def at(self, status: str, version: str) -> bool:
        return self.state["status"] == status and self.state.get("version") == version


def decode_state(node: Node) -> dict[str, Any]:
    """The JSON state of ``active_version``, checked for the fields its status needs.

    Raises:
        RendezvousStateError: not such a JSON object (the message quotes the value).
    """
    try:
        state = json.loads(node.value)
    except ValueError:
        state = None
    status = state.get("status") if isinstance(state, dict) else None
    ok = status in ("setup", "closed") or (
        status in ("joinable", "frozen", "final")
        and isinstance(state.get("version"), str)
        and isinstance(state.get("participants"), list)
        and (status == "joinable" or isinstance(state.get("keep_alives"), list))
        and (status != "final" or isinstance(state.get("num_workers_waiting"), int))
    )
    if not ok:
        raise RendezvousStateError(f"The etcd key '{node.key}' holds no legacy rendezvous state: {node.value!r:.200}")
    return state  # type: ignore[no-any-return]


class _Renewal:
    """A daemon thread that renews the TTL of ``key`` every ``ttl / 2`` seconds until
    :meth:`stop`, or until the key is gone (connection errors are logged and retried)."""

    def __init__(self, transport: LegacyTransport, key: str, ttl: int) -> None:
        self._transport, self.key, self._ttl = transport, key, ttl
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"rdzv-legacy-renew:{key}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopped.is_set():
            try:
                if not self._transport.refresh(self.key, self._ttl):
                    logger.info("The etcd key %s is gone: no longer renewing it.", self.key)
                    return
            except RendezvousError as exc:
                logger.warning("Renewing the TTL of %s failed (will retry): %s", self.key, exc)
            if self._stopped.wait(self._ttl / 2):
                return

    def stop(self, wait: float = 0.0) -> None:
        """Stop renewing; wait up to ``wait`` seconds for the thread to end."""
        self._stopped.set()
        if wait > 0 and self._thread is not threading.current_thread():
            self._thread.join(wait)


class EtcdRendezvous:
    """One node's side of the legacy protocol, for one run.

    Creating it writes the run's sub-tree if missing (``<prefix>/run_<id>`` with ``run_ttl``,
    ``rdzv/``, ``rdzv/version_counter`` = ``"0"``) and starts renewing the sub-tree's TTL.
    Use from one thread at a time.

    Args:
        transport: etcd access (:class:`~.v2.V2Transport` or :class:`~.v3.V3Transport`).
        run_id: The run (str); the sub-tree is ``run_<run_id>``.
        min_nodes, max_nodes: Bounds of a round (ints, ``1 <= min_nodes <= max_nodes``).
        settings: Timeouts, TTLs and prefix (:class:`~.settings.LegacySettings`).

    Raises:
        RendezvousConnectionError: etcd is unreachable.
    """

    def __init__(
        self, transport: LegacyTransport, run_id: str, min_nodes: int, max_nodes: int, settings: LegacySettings
    ) -> None:
        self._t = transport
        self.run_id = run_id
        self._min, self._max = min_nodes, max_nodes
        self._settings = settings
        self._deadline = 0.0
        self._stopped = threading.Event()
        self._rank_renewal: _Renewal | None = None
        base = settings.prefix.rstrip("/")
        self.run_path = f"{base}/run_{run_id}"
        if base:
            transport.make_dir(base)
        transport.make_dir(self.run_path, ttl=settings.run_ttl)
        transport.make_dir(self._path("rdzv"))
        transport.create(self._path("rdzv/version_counter"), "0")
        self._run_renewal: _Renewal | None = _Renewal(transport, self.run_path, settings.run_ttl)

    # -- paths ----------------------------------------------------------------------------

    def _path(self, tail: str) -> str:
        return f"{self.run_path}/{tail}"

    @property
    def active_key(self) -> str:
        """``.../run_<id>/rdzv/active_version``: the state of the current version."""
        return self._path("rdzv/active_version")

    def version_dir(self, version: str) -> str:
        """``.../run_<id>/rdzv/v_<version>``."""
        return self._path(f"rdzv/v_{version}")

    # -- public ---------------------------------------------------------------------------

    def barrier(self) -> tuple[str, int, int]:
        """Take part in the next round; block until it is ``final``.

        Returns:
            ``(version, rank, world_size)``: version a decimal str, rank and size ints.

        Raises:
            RendezvousClosedError: the rendezvous is closed.
            RendezvousTimeoutError: no round completed within ``timeout`` seconds.
            RendezvousStateError: ``active_version`` or the counter holds garbage.
            RendezvousConnectionError: etcd is unreachable.
        """
        self._deadline = time.monotonic() + self._settings.timeout
        while True:
            self._check_deadline()
            if self._rank_renewal is not None:  # a member that comes back lets its key lapse
                self._rank_renewal.stop()
                self._rank_renewal = None
            try:
                return self._init_phase()
            except EtcdRendezvousRetryImmediately:
                continue
            except (EtcdRendezvousRetryableFailure, OutcomeUnknownError) as exc:
                logger.info("Rendezvous of run %s: will retry (%s)", self.run_id, exc)
                self._pause(RETRY_PAUSE)

    def store(self, version: str, timeout: float | None = None) -> LegacyEtcdStore:
        """The store of ``version`` (``.../v_<version>/kv/``); ``timeout`` seconds, or the default."""
        path = f"{self.version_dir(version)}/kv"
        self._t.make_dir(path)
        store = LegacyEtcdStore(self._t.kv, path + "/")
        if timeout is not None:
            store.set_timeout(timeout)
        return store

    def read_state(self) -> dict[str, Any] | None:
        """The decoded state of ``active_version``, or ``None`` when there is none."""
        active = self._read()
        return None if active is None else active.state

    def set_closed(self) -> None:
        """Make the state ``closed`` (creating it when there is none); idempotent.

        Raises:
            RendezvousTimeoutError: still contended after 30 s.
        """
        deadline = time.monotonic() + CLOSE_TIMEOUT
        while time.monotonic() < deadline:
            active = self._read()
            if active is None:
                if self._t.create(self.active_key, json.dumps({"status": "closed"})) is not None:
                    return
                continue
            if active.status == "closed":
                return
            state = {**active.state, "status": "closed"}
            if self._t.compare_and_swap(self.active_key, json.dumps(state), active.node) is not None:
                return
            self._cas_delay()
        raise RendezvousTimeoutError(f"Could not close the legacy rendezvous of run '{self.run_id}' in time.")

    def stop(self) -> None:
        """Stop renewing the run's and this member's TTLs, and interrupt pauses."""
        self._stopped.set()
        for renewal in (self._rank_renewal, self._run_renewal):
            if renewal is not None:
                renewal.stop(STOP_TIMEOUT)
        self._rank_renewal = self._run_renewal = None

    def close(self) -> None:
        """Release etcd connections (a later call reconnects)."""
        self._t.close()

    # -- phases ---------------------------------------------------------------------------

    def _init_phase(self) -> tuple[str, int, int]:
        active = self._try_create() or self._read()
        if active is None:
            raise EtcdRendezvousRetryImmediately("the state vanished")
        if active.status == "closed":
            raise RendezvousClosedError(f"The rendezvous of run '{self.run_id}' is closed.")
        if active.status == "joinable":
            return self._join_phase(active.state["version"])
        if active.status == "final":
            self._wait_as_newcomer(active.state["version"])
            raise EtcdRendezvousRetryImmediately("the final version freed")
        self._wait_for_change(active.revision + 1)  # setup, or frozen: it changed (torch pauses 1 s more)
        raise EtcdRendezvousRetryImmediately(f"the state was {active.status}")

    def _try_create(self) -> _Active | None:
        """Create the next version (``setup`` lock, counter + 1, ``joinable``); ``None`` when
        a state exists."""
        setup = self._t.create(self.active_key, json.dumps({"status": "setup"}), ttl=self._settings.setup_ttl)
        if setup is None:
            return None
        counter_key = self._path("rdzv/version_counter")
        counter, _ = self._t.read(counter_key)
        if counter is None or not counter.value.isdigit():
            raise RendezvousStateError(
                f"The etcd key '{counter_key}' holds no version counter: {None if counter is None else counter.value!r:.80}"
            )
        version = str(int(counter.value) + 1)
        if self._t.compare_and_swap(counter_key, version, counter) is None:
            raise EtcdRendezvousRetryableFailure("the version counter moved while this node held the setup lock")
        self._t.make_dir(self.version_dir(version))
        state: dict[str, Any] = {"status": "joinable", "version": version, "participants": []}
        node = self._t.compare_and_swap(self.active_key, json.dumps(state), setup)
        if node is None:
            raise EtcdRendezvousRetryableFailure(f"the setup lock lapsed before version {version} was joinable")
        logger.info("Rendezvous of run %s: created version %s", self.run_id, version)
        return _Active(node, state, node.version)

    def _join_phase(self, version: str) -> tuple[str, int, int]:
        active, rank = self._join(version)
        if rank == self._min - 1 and active.status == "joinable":
            self._last_call(version, time.monotonic() + self._settings.last_call_timeout)
        self._wait_while(version, "joinable", "frozen")
        return self._confirm_phase(version, rank)

    def _join(self, version: str) -> tuple[_Active, int]:
        while True:
            self._check_deadline()
            active = self._read_or_restart()
            if active.status != "joinable":
                raise EtcdRendezvousRetryableFailure(f"version {version} is no longer joinable")
            if active.state["version"] != version:
                raise EtcdRendezvousRetryImmediately(f"version {active.state['version']} replaced {version}")
            state = active.state
            participants = state["participants"]
            if len(participants) >= self._max:
                raise EtcdRendezvousRetryableFailure(f"version {version} is full for max_nodes={self._max}")
            rank = len(participants)
            participants.append(rank)
            ttl: int | None = None
            if len(participants) == self._max:
                state.update(status="frozen", keep_alives=[])
                ttl = self._settings.frozen_ttl
            elif len(participants) >= self._min:
                ttl = self._settings.joinable_ttl
            node = self._t.compare_and_swap(self.active_key, json.dumps(state), active.node, ttl=ttl)
            if node is not None:
                logger.info("Rendezvous of run %s: joined version %s as rank %d", self.run_id, version, rank)
                return _Active(node, state, node.version), rank
            self._cas_delay()

    def _last_call(self, version: str, last_call_deadline: float) -> None:
        """As rank ``min_nodes - 1``: keep the joinable state alive until the last call
        ends, then freeze it (unless ``max_nodes`` froze it first)."""
        active = self._read_or_restart()
        while True:
            if active.at("frozen", version):
                return
            if not active.at("joinable", version):
                raise EtcdRendezvousRetryableFailure(f"version {version} is no longer joinable")
            now = time.monotonic()
            if now >= last_call_deadline:
                state = {**active.state, "status": "frozen", "keep_alives": []}
                ttl = self._settings.frozen_ttl
                if self._t.compare_and_swap(self.active_key, json.dumps(state), active.node, ttl=ttl) is not None:
                    return
            else:
                ttl = self._settings.joinable_ttl
                node = self._t.compare_and_swap(self.active_key, active.node.value, active.node, ttl=ttl)
                if node is not None:
                    wait = min(ttl / 2, last_call_deadline - now)
                    active = self._wait_for_change(node.version + 1, wait)
                    continue
            self._cas_delay()
            active = self._read_or_restart()

    def _confirm_phase(self, version: str, rank: int) -> tuple[str, int, int]:
        rank_key = f"{self.version_dir(version)}/rank_{rank}"
        while True:
            self._check_deadline()
            active = self._read_or_restart()
            if not active.at("frozen", version):
                raise EtcdRendezvousRetryImmediately(f"version {version} is no longer frozen")
            self._t.put(rank_key, "", ttl=self._settings.keep_alive_ttl)
            state = active.state
            state["keep_alives"].append(rank_key)
            final = len(state["keep_alives"]) == len(state["participants"])
            if final:
                state.update(status="final", num_workers_waiting=0)
            ttl = None if final else self._settings.frozen_ttl
            if self._t.compare_and_swap(self.active_key, json.dumps(state), active.node, ttl=ttl) is not None:
                self._rank_renewal = _Renewal(self._t, rank_key, self._settings.keep_alive_ttl)
                break
            self._cas_delay()
        active = self._wait_while(version, "frozen", "final")
        size = len(active.state["participants"])
        logger.info("Rendezvous of run %s: version %s is final, rank %d of %d", self.run_id, version, rank, size)
        return version, rank, size

    def _wait_while(self, version: str, status: str, target: str) -> _Active:
        """Watch while the state is ``<status, version>``; return it once ``<target, version>``.

        Raises:
            EtcdRendezvousRetryableFailure: it became anything else.
        """
        active = self._read_or_restart()
        while True:
            if active.at(target, version):
                return active
            if not active.at(status, version):
                raise EtcdRendezvousRetryableFailure(f"version {version} left {status} but not for {target}")
            active = self._wait_for_change(active.revision + 1)

    def _wait_as_newcomer(self, version: str) -> None:
        """A ``final`` version runs: count this node in ``num_workers_waiting``, then watch the
        run until the state changes or a member's keep-alive key is gone (then delete the
        state, so that the next version can start)."""
        while True:
            self._check_deadline()
            active = self._read_or_restart()
            if not active.at("final", version):
                raise EtcdRendezvousRetryImmediately(f"version {version} is no longer final")
            state = {**active.state, "num_workers_waiting": active.state["num_workers_waiting"] + 1}
            if self._t.compare_and_swap(self.active_key, json.dumps(state), active.node) is not None:
                break
            self._cas_delay()
        logger.info("Rendezvous of run %s: waiting for version %s to end", self.run_id, version)
        while True:
            current = self._read()
            if current is None or not current.at("final", version):
                return
            keys = [str(key) for key in current.state["keep_alives"]]
            alive = self._t.existing(keys, self.version_dir(version))
            lapsed = [key for key in keys if key not in alive]
            if lapsed:
                logger.info(
                    "Rendezvous of run %s: keep-alive %s lapsed; ending version %s", self.run_id, lapsed[0], version
                )
                self._t.compare_and_delete(self.active_key, current.node)
                return
            self._t.watch(self._path("rdzv"), current.revision + 1, self._remaining(), recursive=True)
            self._check_deadline()

    # -- helpers --------------------------------------------------------------------------

    def _read(self) -> _Active | None:
        node, revision = self._t.read(self.active_key)
        return None if node is None else _Active(node, decode_state(node), revision)

    def _read_or_restart(self) -> _Active:
        active = self._read()
        if active is None:
            raise EtcdRendezvousRetryImmediately("the state is gone (its TTL lapsed)")
        return active

    def _wait_for_change(self, revision: int, timeout: float | None = None) -> _Active:
        """Watch ``active_version`` from ``revision`` (at most ``timeout`` seconds and the
        time left), then read it again."""
        bound = self._remaining() if timeout is None else min(timeout, self._remaining())
        if bound > 0:
            self._t.watch(self.active_key, revision, bound)
        self._check_deadline()
        return self._read_or_restart()

    def _remaining(self) -> float:
        return self._deadline - time.monotonic()

    def _check_deadline(self) -> None:
        if self._remaining() <= 0:
            raise RendezvousTimeoutError(
                f"The legacy rendezvous of run '{self.run_id}' did not complete within {self._settings.timeout:g} s."
            )

    def _pause(self, seconds: float) -> None:
        self._stopped.wait(max(0.0, min(seconds, self._remaining())))

    def _cas_delay(self) -> None:
        self._stopped.wait(random.uniform(0, CAS_DELAY))
