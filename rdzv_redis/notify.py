"""Push notifications: one pub/sub listener thread per client fans messages out to waiters.

Writers ``PUBLISH`` inside their Lua scripts (atomically with the write) on channels that
start with ``rdzv:`` (see :mod:`rdzv_redis.keys`). A :class:`Notifier` owns one dedicated
connection that ``PSUBSCRIBE``\\ s to ``rdzv:*`` and one daemon thread that reads it; every
backend and store of the process sharing the client registers :class:`Waiter` objects with
it instead of opening connections or threads of their own.

The protocol that makes waiting race-free without polling::

    with notifier.waiter(channel, keys) as waiter:   # 1. register (local, no round trip)
        while True:
            waiter.clear()                             # 2. forget older notifications
            if condition_holds_on_server():            # 3. check (one round trip)
                break
            waiter.wait(remaining)                     # 4. sleep until a message or timeout

A message published after step 2 sets the waiter's event, so it is never lost between the
check and the sleep. When the listener's connection breaks or is (re)established, every
waiter is woken with ``resync`` set so it checks the server again: messages sent while
nobody listened are not missed. While the listener is down, :meth:`Notifier.sleep` falls
back to looking every :data:`FALLBACK_POLL` seconds.

Channels can also be *tracked* (:meth:`Notifier.track`): the listener then remembers the last
payload received on them during the current subscription, and :meth:`Notifier.latest`
answers "what is the newest token announced?" without a round trip. A waiter registered
before asking can trust that answer, since anything published later wakes it.
"""

from __future__ import annotations

import logging
import random
import threading
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from rdzv_redis.keys import CHANNEL_PATTERN, CHANNEL_PREFIX

__all__ = ["Notifier", "Waiter"]

logger = logging.getLogger(__name__)

#: How often (seconds) the listener looks at its stop flag while no message arrives.
POLL_INTERVAL = 0.5
#: How often (seconds) waiters look at the server while the listener is not subscribed.
FALLBACK_POLL = 0.25
#: Bounds (seconds) of the jittered back-off between reconnection attempts.
RECONNECT_BACKOFF = (0.05, 1.0)


class Waiter:
    """One blocked caller's interest in a channel.

    Args:
        channel: The channel (str) whose messages wake this waiter.
        keys: When given, only messages whose payload is one of these str wake it (a store
            waiting for some keys); ``None`` means any message on the channel does.
    """

    __slots__ = ("channel", "keys", "last_payload", "resync", "_event")

    def __init__(self, channel: str, keys: Iterable[str] | None = None) -> None:
        self.channel = channel.encode()
        self.keys = None if keys is None else frozenset(k.encode() for k in keys)
        #: The payload (bytes) of the last message that woke the waiter, or ``None``.
        self.last_payload: bytes | None = None
        #: Set when messages may have been missed (the listener reconnected or stops): the
        #: waiter must check the server. The waiter resets it.
        self.resync = False
        self._event = threading.Event()

    def offer(self, payload: bytes) -> None:
        """Wake the waiter if ``payload`` is of interest (called by the listener thread)."""
        if self.keys is None or payload in self.keys:
            self.last_payload = payload
            self._event.set()

    def wake(self) -> None:
        """Wake the waiter and ask it to check the server (the listener reconnected or stops)."""
        self.resync = True
        self._event.set()

    def clear(self) -> None:
        """Forget earlier wake-ups; call right before checking the server."""
        self._event.clear()

    def wait(self, timeout: float) -> bool:
        """Sleep up to ``timeout`` seconds; return whether the waiter was woken."""
        return self._event.wait(max(0.0, timeout))


class _Registration:
    """Context manager returned by :meth:`Notifier.waiter`."""

    def __init__(self, notifier: Notifier, waiter: Waiter) -> None:
        self._notifier = notifier
        self._waiter = waiter

    def __enter__(self) -> Waiter:
        self._notifier._add(self._waiter)
        return self._waiter

    def __exit__(self, *exc_info: object) -> None:
        self._notifier._remove(self._waiter)


class Notifier:
    """Receives ``rdzv:*`` pub/sub messages on one connection and wakes registered waiters.

    The listener thread (a daemon) starts with the first waiter and runs until
    :meth:`close`; it reconnects with a jittered back-off after connection errors.

    Args:
        make_pubsub: Returns a new redis-py ``PubSub`` object (not yet subscribed).
        publish: ``publish(channel, payload)`` on another connection; :meth:`close` uses it to
            wake the listener at once instead of after its poll interval.
        name: Names the thread and log messages (must not contain secrets).
        scrub: Removes secrets from error text before it is logged.
    """

    def __init__(
        self,
        make_pubsub: Callable[[], Any],
        publish: Callable[[str, bytes], Any],
        name: str,
        scrub: Callable[[str], str] = str,
    ) -> None:
        self._make_pubsub = make_pubsub
        self._publish = publish
        self._name = name
        self._scrub = scrub
        #: A channel of this listener alone: a message on it just makes the loop look around.
        self._control_channel = f"{CHANNEL_PREFIX}listener:{uuid.uuid4().hex}"
        self._lock = threading.Lock()
        self._waiters: dict[bytes, set[Waiter]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._subscribed = threading.Event()
        #: Counts subscriptions and their losses; messages of one epoch were received without
        #: a gap, and the server was not restarted within one (its connection would break).
        self._epoch = 0
        #: Tracked channel -> [reference count, epoch of the last message, its payload].
        self._tracked: dict[bytes, list[Any]] = {}

    @property
    def epoch(self) -> int:
        """Changes whenever the listener subscribes or loses its subscription (a reconnect, a
        server restart or fail-over): what the server held before may be gone."""
        return self._epoch

    @property
    def subscribed(self) -> bool:
        """Whether the listener is subscribed right now (messages are being received)."""
        return self._subscribed.is_set()

    def waiter(self, channel: str, keys: Iterable[str] | None = None) -> _Registration:
        """Return a context manager registering a :class:`Waiter` on ``channel`` (see module
        docs); ``keys`` restricts which payloads wake it."""
        return _Registration(self, Waiter(channel, keys))

    def track(self, channel: str) -> None:
        """Start remembering the last message on ``channel`` (reference counted); see
        :meth:`latest`."""
        with self._lock:
            self._tracked.setdefault(channel.encode(), [0, -1, None])[0] += 1
        self._ensure_started()

    def untrack(self, channel: str) -> None:
        """Undo one :meth:`track`."""
        with self._lock:
            entry = self._tracked.get(channel.encode())
            if entry is not None:
                entry[0] -= 1
                if entry[0] <= 0:
                    del self._tracked[channel.encode()]

    def latest(self, channel: str) -> bytes | None:
        """The payload of the last message received on tracked ``channel`` since the
        listener last (re)subscribed, or ``None`` when there is none or the listener is not
        subscribed. Messages published later will still reach registered waiters, so a
        caller that registered a waiter first may trust it as "the newest known"."""
        with self._lock:
            entry = self._tracked.get(channel.encode())
            if entry is None or not self._subscribed.is_set() or entry[1] != self._epoch:
                return None
            return entry[2]  # type: ignore[no-any-return]

    def sleep(self, waiter: Waiter, timeout: float) -> bool:
        """Sleep until ``waiter`` is woken or ``timeout`` seconds pass; return whether the
        caller should look again.

        While the listener is not subscribed, messages may be lost: the sleep is then cut
        to :data:`FALLBACK_POLL` seconds and the waiter is marked ``resync`` (a bounded
        fallback to polling during a pub/sub outage).
        """
        self._ensure_started()
        if self._subscribed.is_set():
            return waiter.wait(timeout)
        waiter.wait(min(timeout, FALLBACK_POLL))
        waiter.resync = True
        return True

    def wait_subscribed(self, timeout: float) -> bool:
        """Start the listener if needed and wait up to ``timeout`` s until it is subscribed."""
        self._ensure_started()
        return self._subscribed.wait(max(0.0, timeout))

    def close(self, timeout: float = 2.0) -> None:
        """Stop the listener thread (waits up to ``timeout`` s) and wake every waiter."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread.is_alive() and thread is not threading.current_thread():
            if self._subscribed.is_set():
                try:
                    self._publish(self._control_channel, b"stop")
                except Exception:  # the server is gone: the poll interval ends the loop
                    logger.debug("Could not wake the listener of %s", self._name, exc_info=True)
            thread.join(timeout)
        self._wake_all()

    # -- waiters -----------------------------------------------------------------------------

    def _add(self, waiter: Waiter) -> None:
        self._ensure_started()
        with self._lock:
            self._waiters.setdefault(waiter.channel, set()).add(waiter)

    def _remove(self, waiter: Waiter) -> None:
        with self._lock:
            waiters = self._waiters.get(waiter.channel)
            if waiters is not None:
                waiters.discard(waiter)
                if not waiters:
                    del self._waiters[waiter.channel]

    def _dispatch(self, channel: bytes, payload: bytes) -> None:
        with self._lock:
            entry = self._tracked.get(channel)
            if entry is not None:
                entry[1], entry[2] = self._epoch, payload
            waiters = list(self._waiters.get(channel, ()))
        for waiter in waiters:
            waiter.offer(payload)

    def _wake_all(self) -> None:
        with self._lock:
            waiters = [w for group in self._waiters.values() for w in group]
        for waiter in waiters:
            waiter.wake()

    # -- listener thread ---------------------------------------------------------------------

    def _ensure_started(self) -> None:
        if self._thread is not None or self._stop.is_set():
            return
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=f"rdzv-redis-listener[{self._name}]", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        delay = RECONNECT_BACKOFF[0]
        while not self._stop.is_set():
            try:
                self._listen_once()
                delay = RECONNECT_BACKOFF[0]
            except Exception as exc:  # any failure: drop the connection and reconnect
                logger.debug("Redis listener %s lost its connection: %s", self._name, self._scrub(str(exc)))
            self._stop.wait(random.uniform(delay / 2, delay))
            delay = min(delay * 2, RECONNECT_BACKOFF[1])

    def _listen_once(self) -> None:
        """Subscribe, then dispatch messages until stopped or the connection breaks."""
        pubsub = self._make_pubsub()
        try:
            pubsub.psubscribe(CHANNEL_PATTERN)
            while not self._stop.is_set():
                message = pubsub.get_message(timeout=POLL_INTERVAL)
                if message is None:
                    continue
                if message["type"] == "pmessage":
                    self._dispatch(message["channel"], message["data"])
                elif message["type"] == "psubscribe":
                    with self._lock:
                        self._epoch += 1
                    self._subscribed.set()
                    self._wake_all()  # anything published before now was not seen: re-check
        finally:
            was_subscribed = self._subscribed.is_set()
            self._subscribed.clear()
            if was_subscribed:
                with self._lock:
                    self._epoch += 1
                self._wake_all()
            try:
                pubsub.close()
            except Exception:  # closing a broken connection may fail again; nothing to do
                logger.debug("Closing the pub/sub connection of %s failed", self._name, exc_info=True)
