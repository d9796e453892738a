"""Liveness of the state-based path: where keep-alives go and how dead nodes are found.

With a :class:`~rdzv_core.backend.LivenessTracker`, keep-alives write a per-node record and
never the shared state; each node checks only its ring predecessors (nodes sorted by key), so
a sweep costs O(log N) plus the few nodes it asks about. Without one, keep-alive times live in
the shared state (torch's scheme).
"""

from __future__ import annotations

import bisect
import itertools
from abc import ABC, abstractmethod
from collections.abc import Iterator

from rdzv_core.backend import LivenessTracker
from rdzv_core.dynamic.clock import SYSTEM_CLOCK, Clock
from rdzv_core.dynamic.settings import RendezvousSettings
from rdzv_core.state import RendezvousState


class _Liveness(ABC):
    writes_state: bool

    @abstractmethod
    def beat(self, node: str, state: RendezvousState) -> None:
        """Record a keep-alive of ``node``."""

    @abstractmethod
    def find_dead(self, state: RendezvousState, me: str) -> list[str]:
        """Return nodes of ``state`` that this node should declare dead."""

    def forget(self, node: str) -> None:  # noqa: B027 - optional
        """Drop the liveness record of ``node``."""


class _TrackerLiveness(_Liveness):
    """Keep-alives in the backend's per-node records; each node watches its ring predecessors."""

    writes_state = False
    _BATCH = 2

    def __init__(self, tracker: LivenessTracker, settings: RendezvousSettings) -> None:
        self._tracker = tracker
        self._settings = settings
        self._ring_of: RendezvousState | None = None
        self._ring: list[str] = []

    def beat(self, node: str, state: RendezvousState) -> None:
        self._tracker.keep_alive(node, self._settings.dead_after_s)

    def _predecessors(self, state: RendezvousState, me: str) -> Iterator[str]:
        """The other nodes of ``state`` in ring order (sorted keys), walking back from ``me``.

        The sorted ring is kept per state object, so a sweep costs O(log N) plus the nodes
        it actually asks about.
        """
        if self._ring_of is not state:
            self._ring_of, self._ring = state, sorted(set(state.members()))
        ring = self._ring
        start = bisect.bisect_left(ring, me)
        others = len(ring) - (1 if start < len(ring) and ring[start] == me else 0)
        return (ring[(start - k) % len(ring)] for k in range(1, others + 1))

    def find_dead(self, state: RendezvousState, me: str) -> list[str]:
        predecessors = self._predecessors(state, me)
        dead: list[str] = []
        while batch := list(itertools.islice(predecessors, self._BATCH)):
            ages = self._tracker.heartbeat_ages(batch)
            for node, age in zip(batch, ages, strict=True):
                if age is not None and age <= self._settings.dead_after_s:
                    return dead  # a live predecessor watches the ones before it
                dead.append(node)
        return dead

    def forget(self, node: str) -> None:
        self._tracker.forget_node(node)


class _StateLiveness(_Liveness):
    """torch's scheme, for backends without a tracker: keep-alive times in the shared state."""

    writes_state = True

    def __init__(self, settings: RendezvousSettings, clock: Clock = SYSTEM_CLOCK) -> None:
        self._settings = settings
        self._clock = clock

    def beat(self, node: str, state: RendezvousState) -> None:
        state.last_heartbeats[node] = self._clock.time()

    def find_dead(self, state: RendezvousState, me: str) -> list[str]:
        expire = self._clock.time() - self._settings.dead_after_s
        return [node for node, beat in state.last_heartbeats.items() if beat < expire and node != me]
