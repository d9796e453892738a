"""``SingleFlight``: concurrent identical reads in one process share one round trip.

When a thousand node objects in one process wake on the same state change, they would all
``GET`` the same key at once. Through a :class:`SingleFlight` they share reads instead, while
every caller still sees a result that was read *after* it called (reads stay linearizable):

* no read in progress: the caller reads at once;
* a read in progress: the caller joins the *next* read, which starts as soon as the current
  one ends and serves everybody who joined it.

So a burst of callers costs at most two reads.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

__all__ = ["SingleFlight"]


class _Flight:
    __slots__ = ("done", "result", "error")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None


class SingleFlight:
    """Run ``fn`` for groups of concurrent callers (see the module docs). Thread-safe.

    ``fn`` must take no argument and be the same for all callers of one instance.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._turn = threading.Condition(self._lock)
        self._busy = False
        self._next: _Flight | None = None

    def run(self, fn: Callable[[], Any]) -> Any:
        """Return ``fn()`` as run by a flight that started after this call; re-raise its
        exception, if any, in every caller of that flight."""
        with self._lock:
            if not self._busy:
                self._busy = True
                flight, leader, must_wait = _Flight(), True, False
            elif self._next is None:
                flight, leader, must_wait = _Flight(), True, True
                self._next = flight
            else:
                flight, leader, must_wait = self._next, False, False
        if not leader:
            flight.done.wait()
            return self._outcome(flight)
        if must_wait:
            self._wait_for_turn(flight)
        try:
            flight.result = fn()
        except BaseException as exc:
            flight.error = exc
        finally:
            self._finish(flight)
        return self._outcome(flight)

    def _wait_for_turn(self, flight: _Flight) -> None:
        """Block until the flight in progress hands over to ``flight`` (see :meth:`_finish`)."""
        with self._lock:
            while self._next is flight:
                self._turn.wait()

    def _finish(self, flight: _Flight) -> None:
        flight.done.set()
        with self._lock:
            if self._next is not None:
                self._next = None  # the waiting leader takes over; _busy stays True
                self._turn.notify_all()
            else:
                self._busy = False

    @staticmethod
    def _outcome(flight: _Flight) -> Any:
        if flight.error is not None:
            raise flight.error
        return flight.result
