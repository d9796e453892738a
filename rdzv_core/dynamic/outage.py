"""The outage guard: no node is declared dead while the backend is unreachable or stalled."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from rdzv_core.api import RendezvousConnectionError
from rdzv_core.dynamic.clock import Clock
from rdzv_core.dynamic.settings import RendezvousSettings

_T = TypeVar("_T")


class OutageGuard:
    """Times a node's backend calls. A connection error, or a call slower than a keep-alive
    interval, means the backend was unreachable or stalled for this node, so probably for
    every node: their keep-alives failed too. The node then sweeps no one until each had a
    full dead-node timeout (seconds) to keep alive again: a frozen server or a fail-over is
    not a dead node.
    """

    def __init__(self, settings: RendezvousSettings, clock: Clock) -> None:
        self._settings = settings
        self._clock = clock
        self._grace_until = float("-inf")

    def note_outage(self) -> None:
        """Start the grace period now."""
        self._grace_until = self._clock.monotonic() + self._settings.dead_after_s

    @property
    def may_sweep(self) -> bool:
        """Whether the grace period is over (dead nodes may be declared)."""
        return self._clock.monotonic() >= self._grace_until

    def call(self, fn: Callable[[], _T]) -> _T:
        """Run one backend call and watch it (see the class docs).

        Raises:
            RendezvousConnectionError: from ``fn`` (after noting the outage).
        """
        started = self._clock.monotonic()
        try:
            result = fn()
        except RendezvousConnectionError:
            self.note_outage()
            raise
        if self._clock.monotonic() - started > self._settings.interval_s:
            self.note_outage()
        return result
