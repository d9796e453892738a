"""Prometheus metrics of one node: its rendezvous events and its agent's rounds.

``rdzv run --metrics-port PORT`` serves them on ``http://ADDR:PORT/metrics`` (needs the
``metrics`` extra: ``pip install 'rdzv[metrics]'``, which installs prometheus-client). They
are fed by the handler's event hook (``add_event_listener``, one
:class:`~rdzv_core.dynamic.settings.RendezvousEvent` per transition) and by the agent's
round hook (``ElasticAgent.add_round_listener``, one
:class:`~rdzv_core.agent.RoundRecord` per round that ended). Every series carries the labels
``run_id`` and ``node``; nothing secret is exported (no endpoint, no configuration).

=========================================  ========  ======================================
series                                     type      meaning
=========================================  ========  ======================================
``rdzv_rendezvous_events_total{event}``    counter   events of the handler, by name
                                                     (``joining``, ``completed``, ...)
``rdzv_rendezvous_duration_seconds``       histogram from ``joining`` to ``completed``
``rdzv_round``                             gauge     the round of the last event
``rdzv_rank``                              gauge     this node's rank (-1 when not in a
                                                     complete round)
``rdzv_world_size``                        gauge     the size of this node's round (0 when
                                                     not in a complete round)
``rdzv_agent_rounds_total{outcome}``       counter   rounds that ended, by outcome
                                                     (``succeeded``, ``failed``, ...)
=========================================  ========  ======================================
"""

from __future__ import annotations

import threading
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rdzv_core.agent import RoundRecord
    from rdzv_core.dynamic.settings import RendezvousEvent

__all__ = ["RendezvousMetrics", "MetricsServer", "import_prometheus_client"]

#: Buckets (seconds) of ``rdzv_rendezvous_duration_seconds``: 10 ms to 10 min.
DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)

#: Events after which this node is in no complete round.
_LEFT_ROUND = frozenset({"joining", "round_broken", "closed", "timed_out", "graceful_exit", "left", "error"})


def import_prometheus_client() -> ModuleType:
    """Return the ``prometheus_client`` module.

    Raises:
        ImportError: it is not installed; the message names the extra to install.
    """
    try:
        import prometheus_client
    except ImportError as exc:
        raise ImportError(
            "Metrics need prometheus-client: pip install 'rdzv[metrics]' (or: pip install prometheus-client)."
        ) from exc
    return prometheus_client


class RendezvousMetrics:
    """The Prometheus series of one node (see the module docs), in their own registry.

    Args:
        run_id: The run id (label ``run_id``).
        node: The node key (label ``node``); may be set later with :meth:`set_node`, since a
            handler's node is known only once it exists.
        registry: A ``prometheus_client.CollectorRegistry``; default: a new one (never the
            process-wide default registry, so several nodes in one process do not clash).

    Raises:
        ImportError: prometheus-client is not installed (see :func:`import_prometheus_client`).

    :meth:`on_event` and :meth:`on_round_end` are thread-safe and never raise.
    """

    def __init__(self, run_id: str, node: str = "", registry: Any = None) -> None:
        prom = import_prometheus_client()
        self.registry = registry if registry is not None else prom.CollectorRegistry()
        labels = ("run_id", "node")
        self._run_id, self._node = run_id, node
        self._lock = threading.Lock()
        self._joining_at: float | None = None
        self._events = prom.Counter(
            "rdzv_rendezvous_events",
            "Rendezvous events of this node, by name.",
            (*labels, "event"),
            registry=self.registry,
        )
        self._duration = prom.Histogram(
            "rdzv_rendezvous_duration_seconds",
            "Seconds from joining a round to its completion.",
            labels,
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self._round = prom.Gauge(
            "rdzv_round", "The round of this node's last rendezvous event.", labels, registry=self.registry
        )
        self._rank = prom.Gauge(
            "rdzv_rank", "This node's rank; -1 when it is in no complete round.", labels, registry=self.registry
        )
        self._world_size = prom.Gauge(
            "rdzv_world_size",
            "The size of this node's round; 0 when it is in no complete round.",
            labels,
            registry=self.registry,
        )
        self._rounds = prom.Counter(
            "rdzv_agent_rounds",
            "Rounds of the agent that ended, by outcome.",
            (*labels, "outcome"),
            registry=self.registry,
        )
        self._out_of_round()

    def set_node(self, node: str) -> None:
        """Label the series that follow with ``node`` (the handler's node key)."""
        with self._lock:
            self._node = node
            self._out_of_round()

    def _labels(self) -> tuple[str, str]:
        return self._run_id, self._node

    def _out_of_round(self) -> None:
        self._rank.labels(*self._labels()).set(-1)
        self._world_size.labels(*self._labels()).set(0)

    def on_event(self, event: RendezvousEvent) -> None:
        """Count ``event`` and update the round, rank, world size and duration series."""
        with self._lock:
            labels = self._labels()
            self._events.labels(*labels, event.name).inc()
            self._round.labels(*labels).set(event.round)
            if event.name == "joining":
                self._joining_at = event.time
            if event.name in _LEFT_ROUND:
                self._out_of_round()
            if event.name == "completed":
                if event.rank is not None and event.world_size is not None:
                    self._rank.labels(*labels).set(event.rank)
                    self._world_size.labels(*labels).set(event.world_size)
                if self._joining_at is not None:
                    self._duration.labels(*labels).observe(max(0.0, event.time - self._joining_at))
                    self._joining_at = None

    def on_round_end(self, record: RoundRecord) -> None:
        """Count a round of the agent that ended, by its outcome."""
        with self._lock:
            self._rounds.labels(*self._labels(), str(record.outcome.value)).inc()


class MetricsServer:
    """An HTTP server answering ``GET /metrics`` with ``metrics`` (prometheus-client's
    ``start_http_server``, in a daemon thread).

    Args:
        metrics: The :class:`RendezvousMetrics` to serve.
        port: TCP port (1-65535; 0 picks a free one, see :attr:`port`).
        addr: Address to bind (default ``0.0.0.0``: every interface, for a remote scraper).

    Raises:
        ValueError: ``port`` is out of range.
        OSError: the address cannot be bound (in use, not local).

    Stop it with :meth:`close` (idempotent); it is also a context manager.
    """

    def __init__(self, metrics: RendezvousMetrics, port: int, addr: str = "0.0.0.0") -> None:
        if not 0 <= port <= 65535:
            raise ValueError(f"metrics port {port!r} is out of range (0-65535)")
        prom = import_prometheus_client()
        self._server, self._thread = prom.start_http_server(port, addr, registry=metrics.registry)
        self.port: int = self._server.server_port

    def close(self) -> None:
        """Stop serving and release the port."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
            self._thread.join(timeout=5)

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
