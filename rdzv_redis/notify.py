"""Push notifications without a listener thread: waiters read the pub/sub socket themselves.

Writers ``PUBLISH`` inside their Lua scripts (atomically with the write) on channels of their
run (see :mod:`rdzv_redis.keys`). A :class:`Notifier` owns one pub/sub connection per client
and ``SUBSCRIBE``\\ s to exactly the channels something waits on or tracks: no pattern, so a
client receives only its own run's messages, and a per-run ACL user (``&rdzv:{R}:*``) is
allowed everything it asks for.

Nobody reads the connection in the background. A caller that blocks (:meth:`Notifier.sleep`,
or entering :meth:`Notifier.waiter` until its subscription is confirmed) reads the socket
itself and hands each message to the waiters it concerns; when several threads of a process
block at once, one of them reads and the others sleep on a condition until it has read
something for them or stops reading (leader and followers). A node therefore costs one
connection and no thread, and a message wakes exactly the thread waiting for it. Messages
that arrive while nobody blocks stay in the socket until the next wait, or until
:meth:`Notifier.latest` drains them (without blocking).

The protocol that makes waiting race-free without polling::

    with notifier.waiter([channel], timeout) as waiter:   # 1. subscribed (confirmed) or resync
        while True:
            waiter.clear()                                # 2. forget older notifications
            if condition_holds_on_server():               # 3. check (one round trip)
                break
            notifier.sleep(waiter, remaining)             # 4. read until a message or timeout

The server sent the ``SUBSCRIBE`` confirmation before it ran the check of step 3 (the check
is sent after the confirmation was read), so anything published after the check reaches the
waiter. When the connection breaks, every waiter is woken with ``resync`` set, so it checks
the server; a short-lived thread re-connects with a jittered back-off and re-subscribes (the
one thread there is, and only during an outage). While the connection is down, sleeps are cut
to :data:`FALLBACK_POLL` seconds: a bounded fallback to polling.

Channels can also be *tracked* (:meth:`Notifier.track`): they stay subscribed, and
:meth:`Notifier.latest` answers "what is the newest payload announced on it?" without a round
trip. A waiter registered before asking can trust that answer, since anything published later
wakes it.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["Notifier", "Waiter"]

logger = logging.getLogger(__name__)

#: How often (seconds) waiters look at the server while the connection is down.
FALLBACK_POLL = 0.25
#: Bounds (seconds) of the jittered back-off between reconnection attempts.
RECONNECT_BACKOFF = (0.05, 1.0)


class Waiter:
    """One blocked caller's interest in some channels.

    Args:
        channels: The channels (str) whose messages wake this waiter.
    """

    __slots__ = ("channels", "last_payload", "resync", "woken")

    def __init__(self, channels: Iterable[str]) -> None:
        self.channels = frozenset(channel.encode() for channel in channels)
        #: The payload (bytes) of the last message that woke the waiter, or ``None``.
        self.last_payload: bytes | None = None
        #: Set when messages may have been missed (not subscribed yet, the connection broke or
        #: the notifier closed): the waiter must check the server. The waiter resets it.
        self.resync = False
        #: Set by a message or a resync; :meth:`clear` resets it.
        self.woken = False

    def clear(self) -> None:
        """Forget earlier wake-ups; call right before checking the server."""
        self.woken = False


class _Registration:
    """Context manager returned by :meth:`Notifier.waiter`."""

    def __init__(self, notifier: Notifier, waiter: Waiter, timeout: float) -> None:
        self._notifier = notifier
        self._waiter = waiter
        self._timeout = timeout

    def __enter__(self) -> Waiter:
        self._notifier._add(self._waiter, self._timeout)
        return self._waiter

    def __exit__(self, *exc_info: object) -> None:
        self._notifier._remove(self._waiter)


class Notifier:
    """The pub/sub connection of one client, read by whichever caller is waiting.

    Args:
        make_pubsub: Returns a new redis-py ``PubSub`` object (not yet subscribed).
        name: Names the reconnect thread and log messages (must not contain secrets).
        scrub: Removes secrets from error text before it is logged.
        refused: Tells whether an error means the server refuses the subscription (an ACL
            without ``+subscribe`` or the run's channels): logged once as a WARNING, since
            every wait then polls.

    Thread-safe. Every wait is bounded by its caller's timeout.
    """

    def __init__(
        self,
        make_pubsub: Callable[[], Any],
        name: str,
        scrub: Callable[[str], str] = str,
        refused: Callable[[BaseException], bool] = lambda exc: False,
    ) -> None:
        self._make_pubsub = make_pubsub
        self._name = name
        self._scrub = scrub
        self._refused = refused
        self._warned = False
        self._delay = 0.0  # seconds to wait before the next connection attempt
        self._cond = threading.Condition()
        self._pubsub: Any = None  # set while connected
        self._reading = False  # one thread reads the socket at a time
        self._connector: threading.Thread | None = None
        self._closed = False
        self._waiters: dict[bytes, set[Waiter]] = {}
        #: Channel -> references (waiters and trackers) that want it subscribed.
        self._wanted: Counter[bytes] = Counter()
        #: Channels a SUBSCRIBE was sent for on the current connection (no UNSUBSCRIBE since).
        self._asked: set[bytes] = set()
        #: Channels the server confirmed, and commands per channel still unconfirmed.
        self._confirmed: set[bytes] = set()
        self._pending: Counter[bytes] = Counter()
        #: Counts connections and their losses; the messages of one epoch came without a gap,
        #: and the server was not restarted within one (the connection would have broken).
        self._epoch = 0
        #: Tracked channel -> (epoch of the last message, its payload).
        self._latest: dict[bytes, tuple[int, bytes]] = {}
        self._tracked: Counter[bytes] = Counter()

    @property
    def epoch(self) -> int:
        """Changes whenever the connection is made or lost (a reconnect, a server restart or
        fail-over): what the server held before may be gone."""
        return self._epoch

    @property
    def subscribed(self) -> bool:
        """Whether the connection is up and every wanted channel is confirmed."""
        with self._cond:
            return self._all_confirmed()

    def waiter(self, channels: Iterable[str], timeout: float) -> _Registration:
        """A context manager registering a :class:`Waiter` on ``channels`` (see the module
        docs). Entering it subscribes what is not subscribed yet and waits for the confirmation,
        up to ``timeout`` seconds or :data:`FALLBACK_POLL`, whichever is shorter; without one
        in time, :meth:`sleep` polls until it comes."""
        return _Registration(self, Waiter(channels), timeout)

    def track(self, channel: str) -> None:
        """Keep ``channel`` subscribed and remember its newest payload (reference counted; see
        :meth:`latest`). Connects in the background if needed; never blocks."""
        key = channel.encode()
        with self._cond:
            self._tracked[key] += 1
            self._want(key)

    def untrack(self, channel: str) -> None:
        """Undo one :meth:`track`."""
        key = channel.encode()
        with self._cond:
            if self._tracked[key] > 0:
                self._tracked[key] -= 1
                if not self._tracked[key]:
                    del self._tracked[key]
                    self._latest.pop(key, None)
                self._unwant(key)

    def latest(self, channel: str) -> bytes | None:
        """The payload of the newest message on tracked ``channel`` since the connection was
        made, or ``None`` when there is none or the channel is not confirmed. Reads what has
        arrived first (without blocking), so a caller that registered a waiter before asking
        may trust the answer as "the newest known": later messages wake the waiter."""
        key = channel.encode()
        self._block_until(lambda: False, time.monotonic())  # drain what is in the socket
        with self._cond:
            entry = self._latest.get(key)
            if entry is None or not self._usable(key) or entry[0] != self._epoch:
                return None
            return entry[1]

    def confirmed_epoch(self, channel: str) -> int | None:
        """The current :attr:`epoch` when tracked ``channel`` is subscribed and confirmed,
        else ``None``. A read the caller sends after this, answered within that epoch, saw
        everything published before it; anything later arrives on the connection."""
        key = channel.encode()
        with self._cond:
            if key in self._tracked and self._pubsub is not None and self._usable(key):
                return self._epoch
            return None

    def note(self, channel: str, payload: bytes, epoch: int) -> None:
        """Remember ``payload``, read from the server after :meth:`confirmed_epoch` returned
        ``epoch``, as the newest known on tracked ``channel`` (what :meth:`latest` answers),
        unless the connection changed since or a message arrived in this epoch (that one is
        kept: at worst it reports a spurious change). Without this, after a reconnection
        :meth:`latest` knows nothing until the next announcement, and every check would ask
        the server."""
        key = channel.encode()
        with self._cond:
            if epoch != self._epoch or key not in self._tracked or not self._usable(key):
                return
            entry = self._latest.get(key)
            if entry is None or entry[0] != epoch:
                self._latest[key] = (epoch, payload)

    def sleep(self, waiter: Waiter, timeout: float) -> bool:
        """Block until ``waiter`` is woken or ``timeout`` seconds pass, reading the socket
        meanwhile if no other thread does; return whether the caller should look again.

        While the connection is down or the waiter's channels are not confirmed, messages may
        be lost: the sleep is then cut to :data:`FALLBACK_POLL` seconds and the waiter is
        marked ``resync`` (a bounded fallback to polling during a pub/sub outage).
        """
        deadline = time.monotonic() + max(0.0, timeout)

        def confirmed() -> bool:
            return self._all_confirmed(waiter.channels)

        with self._cond:
            live = confirmed()
        if live:
            return self._block_until(lambda: waiter.woken, deadline)
        # Until the subscription is confirmed: wake on a message, on the confirmation (then
        # look again: what came before it was not seen) or after a poll interval.
        self._block_until(lambda: waiter.woken or confirmed(), min(deadline, time.monotonic() + FALLBACK_POLL))
        waiter.resync = True
        return True

    def wait_subscribed(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds until every wanted channel is confirmed."""
        return self._block_until(self._all_confirmed, time.monotonic() + max(0.0, timeout))

    def close(self, timeout: float = 2.0) -> None:
        """Close the connection, stop the reconnect thread (waits up to ``timeout`` s) and
        wake every waiter."""
        with self._cond:
            self._closed = True
            pubsub, self._pubsub = self._pubsub, None
            connector = self._connector
            self._wake_all_locked()
        if pubsub is not None:
            _close_quietly(pubsub, self._name)
        if connector is not None and connector is not threading.current_thread():
            connector.join(timeout)

    # -- subscriptions (the caller holds self._cond) ------------------------------------------

    def _usable(self, channel: bytes) -> bool:
        return channel in self._confirmed and not self._pending[channel]

    def _all_confirmed(self, channels: Iterable[bytes] | None = None) -> bool:
        """Whether connected and ``channels`` (default: every wanted one) are confirmed."""
        return self._pubsub is not None and all(
            self._usable(c) for c in (self._wanted if channels is None else channels)
        )

    def _want(self, channel: bytes) -> None:
        self._wanted[channel] += 1
        self._sync_locked()

    def _unwant(self, channel: bytes) -> None:
        self._wanted[channel] -= 1
        if self._wanted[channel] <= 0:
            del self._wanted[channel]
            self._sync_locked()

    def _sync_locked(self) -> None:
        """Make the subscriptions of the connection match what is wanted (sends commands;
        their confirmations are read later), or start connecting."""
        if self._closed:
            return
        if self._pubsub is None:
            if self._wanted:
                self._start_connector_locked()
            return
        subscribe = [c for c in self._wanted if c not in self._asked]
        unsubscribe = [c for c in self._asked if c not in self._wanted]
        try:
            if subscribe:
                self._pubsub.subscribe(*subscribe)
            if unsubscribe:
                self._pubsub.unsubscribe(*unsubscribe)
        except Exception as exc:  # a broken connection: the next read reports it too
            self._lost_locked(self._pubsub, exc)
            return
        for channel in subscribe:
            self._asked.add(channel)
            self._pending[channel] += 1
        for channel in unsubscribe:
            self._asked.discard(channel)
            self._pending[channel] += 1

    def _confirm_locked(self, kind: str, channel: bytes) -> None:
        if self._pending[channel] > 1:
            self._pending[channel] -= 1
        else:
            self._pending.pop(channel, None)
        if kind == "subscribe":
            self._confirmed.add(channel)
            self._delay = 0.0  # the server takes our subscriptions: the shortest pause next time
        else:
            self._confirmed.discard(channel)

    # -- waiters ------------------------------------------------------------------------------

    def _add(self, waiter: Waiter, timeout: float) -> None:
        with self._cond:
            for channel in waiter.channels:
                self._waiters.setdefault(channel, set()).add(waiter)
                self._want(channel)
        # At most a poll interval: a refused or lost subscription must not hold the caller; its
        # sleeps then poll, and wake on a late confirmation (see sleep()).
        wait = min(max(0.0, timeout), FALLBACK_POLL)
        self._block_until(lambda: self._all_confirmed(waiter.channels), time.monotonic() + wait)

    def _remove(self, waiter: Waiter) -> None:
        with self._cond:
            for channel in waiter.channels:
                waiters = self._waiters.get(channel)
                if waiters is not None:
                    waiters.discard(waiter)
                    if not waiters:
                        del self._waiters[channel]
                self._unwant(channel)

    def _dispatch_locked(self, channel: bytes, payload: bytes) -> None:
        if channel in self._tracked:
            self._latest[channel] = (self._epoch, payload)
        for waiter in self._waiters.get(channel, ()):
            waiter.last_payload = payload
            waiter.woken = True

    def _wake_all_locked(self) -> None:
        for group in self._waiters.values():
            for waiter in group:
                waiter.resync = True
                waiter.woken = True
        self._cond.notify_all()

    # -- reading ------------------------------------------------------------------------------

    def _block_until(self, done: Callable[[], bool], deadline: float) -> bool:
        """Until ``done()`` (evaluated under the lock) or the monotonic ``deadline``: read the
        socket when no other thread does, else sleep until the reader found something. A
        deadline in the past still reads what has arrived. Returns ``done()``."""
        while True:
            with self._cond:
                while True:
                    if done():
                        return True
                    remaining = deadline - time.monotonic()
                    if self._closed:
                        return False
                    if self._pubsub is not None and not self._reading:
                        self._reading, pubsub = True, self._pubsub
                        break
                    if remaining <= 0:
                        return False
                    self._cond.wait(remaining)
            try:
                self._read(pubsub, max(0.0, remaining))
            finally:
                with self._cond:
                    self._reading = False
                    self._cond.notify_all()
            if remaining <= 0:
                with self._cond:
                    return done()

    def _read(self, pubsub: Any, timeout: float) -> None:
        """Read messages for up to ``timeout`` seconds (all that have arrived when 0) and
        dispatch them; stops after the first batch that wakes someone."""
        try:
            message = pubsub.get_message(timeout=timeout)
            while message is not None:
                with self._cond:
                    if self._pubsub is not pubsub:
                        return  # lost or closed meanwhile
                    self._handle_locked(message)
                message = pubsub.get_message(timeout=0.0)
        except Exception as exc:  # the connection broke: reconnect in the background
            with self._cond:
                self._lost_locked(pubsub, exc)

    def _handle_locked(self, message: dict[str, Any]) -> None:
        kind, channel = message["type"], message["channel"]
        if kind == "message":
            self._dispatch_locked(channel, message["data"])
        elif kind in ("subscribe", "unsubscribe"):
            self._confirm_locked(kind, channel)
        self._cond.notify_all()

    def _lost_locked(self, pubsub: Any, exc: BaseException) -> None:
        if self._pubsub is not pubsub:
            return
        if self._refused(exc) and not self._warned:
            self._warned = True
            logger.warning(
                "Redis at %s refused the pub/sub subscription (%s): every wait of this client polls every %g s instead. "
                "Grant the ACL user +subscribe +unsubscribe and the run's channels (&rdzv:{RUN_ID}:*).",
                self._name,
                self._scrub(str(exc)),
                FALLBACK_POLL,
            )
        else:
            logger.debug("The pub/sub connection of %s broke: %s", self._name, self._scrub(str(exc)))
        self._pubsub = None
        self._asked.clear()
        self._confirmed.clear()
        self._pending.clear()
        self._epoch += 1
        self._back_off_locked()
        self._wake_all_locked()
        _close_quietly(pubsub, self._name)
        self._start_connector_locked()

    # -- connecting (a thread of its own, only while not connected) ---------------------------

    def _back_off_locked(self) -> None:
        """Lengthen the pause before the next connection attempt (jittered, doubling up to
        :data:`RECONNECT_BACKOFF` ``[1]``); a confirmed subscription resets it. A server that
        accepts the connection but refuses the subscription is thus retried once a second,
        not in a loop."""
        self._delay = min(max(2 * self._delay, RECONNECT_BACKOFF[0]), RECONNECT_BACKOFF[1])

    def _start_connector_locked(self) -> None:
        if self._connector is None and not self._closed and self._wanted:
            self._connector = threading.Thread(
                target=self._connect_loop, name=f"rdzv-redis-connect[{self._name}]", daemon=True
            )
            self._connector.start()

    def _connect_loop(self) -> None:
        try:
            while True:
                with self._cond:
                    if self._closed or not self._wanted or self._pubsub is not None:
                        return
                    channels, delay = list(self._wanted), self._delay
                if delay:
                    time.sleep(random.uniform(delay / 2, delay))
                try:
                    pubsub = self._make_pubsub()
                    pubsub.subscribe(*channels)
                except Exception as exc:  # unreachable: try again later
                    logger.debug("Redis pub/sub of %s could not connect: %s", self._name, self._scrub(str(exc)))
                    with self._cond:
                        self._back_off_locked()
                    continue
                with self._cond:
                    if self._closed:
                        _close_quietly(pubsub, self._name)
                        return
                    self._pubsub = pubsub
                    self._asked = set(channels)
                    self._pending = Counter(channels)
                    self._confirmed = set()
                    self._epoch += 1
                    self._sync_locked()  # what became (un)wanted meanwhile
                    self._wake_all_locked()  # anything published before now was not seen
                return
        finally:
            with self._cond:
                self._connector = None
                if self._pubsub is None:
                    self._start_connector_locked()  # gave up while still wanted: go on


def _close_quietly(pubsub: Any, name: str) -> None:
    try:
        pubsub.close()
    except Exception:  # closing a broken connection may fail again; nothing to do
        logger.debug("Closing the pub/sub connection of %s failed", name, exc_info=True)
