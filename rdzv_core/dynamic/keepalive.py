"""The keep-alive thread of a handler: one daemon thread per handler, armed per round.

The thread is started once, when the handler first joins (off the critical path of a round's
completion, where starting a thread of its own per round would put it), and lives across
rounds. It ticks only while armed: from the moment the node holds a rank (rank 0: after it
published the bootstrap address) until the node leaves for the next round. Arming and
disarming are a condition-variable notification, not a thread start or join.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

__all__ = ["KeepAliveTimer"]

logger = logging.getLogger("rdzv_core.dynamic")


class KeepAliveTimer:
    """Calls ``tick()`` every ``interval_s`` seconds (float) while armed, on a daemon thread.

    The next tick is due ``interval_s`` after the previous one ended; an exception from
    ``tick`` is logged as a WARNING (``describe(exc)`` gives the text) and the ticks go on.
    Thread-safe.
    """

    def __init__(
        self, tick: Callable[[], None], interval_s: float, name: str, describe: Callable[[BaseException], str]
    ) -> None:
        if interval_s <= 0:
            raise ValueError(f"The keep-alive interval must be a positive number of seconds (got {interval_s!r}).")
        self._tick = tick
        self._interval = interval_s
        self._name = name
        self._describe = describe
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        #: Monotonic time (s) of the next tick; None while disarmed.
        self._due: float | None = None
        #: Bumped by every arm/disarm/stop, so a tick that ran meanwhile does not re-schedule.
        self._generation = 0
        self._ticking = False

    @property
    def armed(self) -> bool:
        """Whether a tick is scheduled."""
        return self._due is not None

    @property
    def running(self) -> bool:
        """Whether the thread runs (armed or not)."""
        thread = self._thread
        return thread is not None and thread.is_alive()

    def start(self) -> None:
        """Start the thread (disarmed) unless it runs; a no-op when it does."""
        with self._cond:
            if self._thread is not None and self._thread.is_alive():
                return
            thread = self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._cond.notify_all()  # a stopped thread still waiting sees that it is replaced
        thread.start()

    def arm(self, first_in: float) -> None:
        """Tick ``first_in`` seconds from now (clamped to ``[0, interval]``), then every interval.
        Starts the thread if needed."""
        self.start()
        with self._cond:
            self._generation += 1
            self._due = time.monotonic() + min(max(first_in, 0.0), self._interval)
            self._cond.notify_all()

    def disarm(self, timeout: float) -> None:
        """No tick starts after this returns; a tick under way is waited for (at most
        ``timeout`` s; not when called from the tick itself)."""
        with self._cond:
            self._generation += 1
            self._due = None
            self._cond.notify_all()
            if threading.current_thread() is not self._thread:
                self._cond.wait_for(lambda: not self._ticking, timeout)

    def stop(self, timeout: float) -> None:
        """Disarm and end the thread (joined for at most ``timeout`` s); :meth:`start` or
        :meth:`arm` starts a new one."""
        with self._cond:
            self._generation += 1
            self._due = None
            thread, self._thread = self._thread, None
            self._cond.notify_all()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def _run(self) -> None:
        me = threading.current_thread()
        with self._cond:
            while self._thread is me:
                if self._due is None:
                    self._cond.wait()
                    continue
                delay = self._due - time.monotonic()
                if delay > 0:
                    self._cond.wait(delay)
                    continue
                generation, self._ticking = self._generation, True
                self._cond.release()
                try:
                    self._tick()
                except Exception as exc:
                    logger.warning("%s", self._describe(exc))
                finally:
                    self._cond.acquire()
                    self._ticking = False
                    self._cond.notify_all()
                if generation == self._generation and self._due is not None:
                    self._due = time.monotonic() + self._interval
