"""Settings of a rendezvous: timeouts, bounds, keep-alive cadence, and the events emitted."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import timedelta

from rdzv_core.backend import RoundSpec

__all__ = ["HANDLER_CONFIG_KEYS", "RendezvousTimeout", "RendezvousSettings", "RendezvousEvent", "closed_message"]


def closed_message(run_id: str) -> str:
    """The text of the :class:`~rdzv_core.api.RendezvousClosedError` of ``run_id``: what it
    means and how to start a new job under that id."""
    return (
        f"The rendezvous '{run_id}' is closed: its job ended or was stopped. A new job can use the run id once the closed "
        f"record expires (backend option closed_ttl, 300 s by default) or at once after `rdzv reset --run-id {run_id}`, "
        "or use another run id."
    )


#: Configuration keys read by :func:`create_handler` (backends add their own).
HANDLER_CONFIG_KEYS = frozenset(
    {
        "join_timeout",
        "last_call_timeout",
        "close_timeout",
        "heartbeat_timeout",
        "keep_alive_interval",
        "keep_alive_max_attempt",
    }
)


class RendezvousTimeout:
    """Timeouts of the rendezvous, each a positive ``timedelta`` (``None`` = default).

    Args:
        join: Total time for a round to complete (default 600 s).
        last_call: Wait after ``min_nodes`` joined before completing (default 30 s).
        close: Time to mark the rendezvous closed (default 30 s).
        heartbeat: Time for one keep-alive to complete (default 5 s).

    Raises:
        ValueError: a timeout is zero or negative; the message names it.
    """

    _DEFAULTS = {
        "join": timedelta(seconds=600),
        "last_call": timedelta(seconds=30),
        "close": timedelta(seconds=30),
        "heartbeat": timedelta(seconds=5),
    }

    def __init__(
        self,
        join: timedelta | None = None,
        last_call: timedelta | None = None,
        close: timedelta | None = None,
        heartbeat: timedelta | None = None,
    ) -> None:
        given = {"join": join, "last_call": last_call, "close": close, "heartbeat": heartbeat}
        for name, value in given.items():
            value = self._DEFAULTS[name] if value is None else value
            if not isinstance(value, timedelta) or value <= timedelta(0):
                raise ValueError(f"The {name} timeout ({value!r}) must be a positive timedelta.")
            setattr(self, "_" + name, value)

    @property
    def join(self) -> timedelta:
        return self._join  # type: ignore[attr-defined,no-any-return]

    @property
    def last_call(self) -> timedelta:
        return self._last_call  # type: ignore[attr-defined,no-any-return]

    @property
    def close(self) -> timedelta:
        return self._close  # type: ignore[attr-defined,no-any-return]

    @property
    def heartbeat(self) -> timedelta:
        return self._heartbeat  # type: ignore[attr-defined,no-any-return]


@dataclass(frozen=True)
class RendezvousSettings:
    """Settings of one rendezvous.

    Attributes:
        run_id: Run id shared by the nodes.
        min_nodes: Minimum nodes of a round (``>= 1``).
        max_nodes: Maximum nodes of a round (``>= min_nodes``).
        timeout: The :class:`RendezvousTimeout`.
        keep_alive_interval: Time between two keep-alives of a node.
        keep_alive_max_attempt: Missed keep-alives after which a node counts as dead.
    """

    run_id: str
    min_nodes: int
    max_nodes: int
    timeout: RendezvousTimeout
    keep_alive_interval: timedelta
    keep_alive_max_attempt: int

    def __post_init__(self) -> None:
        if not self.run_id:
            raise ValueError("The run id must be a non-empty string.")
        if self.min_nodes < 1 or self.max_nodes < self.min_nodes:
            raise ValueError(
                f"Need 1 <= min_nodes <= max_nodes (got min_nodes={self.min_nodes}, max_nodes={self.max_nodes})."
            )
        if self.keep_alive_interval <= timedelta(0):
            raise ValueError(f"The keep-alive interval ({self.keep_alive_interval}) must be positive.")
        if self.keep_alive_max_attempt < 1:
            raise ValueError(f"The keep-alive max attempt ({self.keep_alive_max_attempt}) must be >= 1.")

    @property
    def interval_s(self) -> float:
        return self.keep_alive_interval.total_seconds()

    @property
    def dead_after_s(self) -> float:
        """Seconds of silence after which a node counts as dead."""
        return self.interval_s * self.keep_alive_max_attempt

    @property
    def join_s(self) -> float:
        """The join timeout in seconds."""
        return self.timeout.join.total_seconds()

    def round_spec(self) -> RoundSpec:
        """What a server applying the membership operations needs (:class:`RoundSpec`)."""
        return RoundSpec(self.min_nodes, self.max_nodes, self.timeout.last_call.total_seconds(), self.dead_after_s)


@dataclass(frozen=True)
class RendezvousEvent:
    """One transition of a node, given to event listeners (for metrics and tracing).

    ``name`` is one of ``joining``, ``completed``, ``waiting``, ``removed_dead_nodes``,
    ``round_broken`` (the round lost a member before rank 0 published its address: the node
    joins the next one), ``closed``, ``timed_out``, ``graceful_exit``, ``left``, ``error``.
    """

    name: str
    run_id: str
    node: str
    round: int
    message: str
    rank: int | None = None
    world_size: int | None = None
    time: float = field(default_factory=time.time)
