"""The time source of the handler, injectable so that a model can drive the real code."""

from __future__ import annotations

import random
import time

__all__ = ["Clock", "SYSTEM_CLOCK"]


class Clock:
    """Monotonic time (deadlines), wall time (state deadlines), sleeping and jitter.

    The default reads the system; a test passes a subclass whose time moves only when told.
    All times are seconds (float).
    """

    def monotonic(self) -> float:
        """Seconds of a clock that never goes back (:func:`time.monotonic`)."""
        return time.monotonic()

    def time(self) -> float:
        """Wall-clock seconds since the epoch (:func:`time.time`)."""
        return time.time()

    def sleep(self, seconds: float) -> None:
        """Block ``seconds`` (negative: not at all)."""
        if seconds > 0:
            time.sleep(seconds)

    def uniform(self, low: float, high: float) -> float:
        """A random float in ``[low, high]`` (jitter)."""
        return random.uniform(low, high)


#: The clock of every handler that is not given one.
SYSTEM_CLOCK = Clock()
