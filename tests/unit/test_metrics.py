"""RendezvousMetrics: the series follow the handler's events and the agent's rounds."""

from __future__ import annotations

import urllib.request

import pytest

from rdzv_core.agent import Outcome, RoundRecord
from rdzv_core.dynamic.settings import RendezvousEvent

prom = pytest.importorskip("prometheus_client")

from rdzv_core.metrics import MetricsServer, RendezvousMetrics  # noqa: E402

pytestmark = pytest.mark.unit

LABELS = {"run_id": "job", "node": "n1"}


def _event(
    name: str, t: float, round_: int = 1, rank: int | None = None, world_size: int | None = None
) -> RendezvousEvent:
    return RendezvousEvent(name, "job", "n1", round_, name, rank, world_size, time=t)


def _value(metrics: RendezvousMetrics, name: str, **extra: str) -> float | None:
    value: float | None = metrics.registry.get_sample_value(name, {**LABELS, **extra})
    return value


def test_a_completed_round_sets_rank_world_size_and_duration() -> None:
    metrics = RendezvousMetrics("job", "n1")
    assert _value(metrics, "rdzv_rank") == -1 and _value(metrics, "rdzv_world_size") == 0
    metrics.on_event(_event("joining", 100.0))
    metrics.on_event(_event("completed", 102.5, rank=3, world_size=8))
    assert _value(metrics, "rdzv_rank") == 3 and _value(metrics, "rdzv_world_size") == 8
    assert _value(metrics, "rdzv_round") == 1
    assert _value(metrics, "rdzv_rendezvous_duration_seconds_count") == 1
    assert _value(metrics, "rdzv_rendezvous_duration_seconds_sum") == 2.5
    assert _value(metrics, "rdzv_rendezvous_events_total", event="joining") == 1


def test_joining_again_leaves_the_round_and_counts_events() -> None:
    metrics = RendezvousMetrics("job", "n1")
    metrics.on_event(_event("joining", 1.0))
    metrics.on_event(_event("completed", 2.0, rank=0, world_size=2))
    metrics.on_event(_event("joining", 3.0, round_=2))
    assert _value(metrics, "rdzv_rank") == -1 and _value(metrics, "rdzv_world_size") == 0
    assert _value(metrics, "rdzv_round") == 2
    assert _value(metrics, "rdzv_rendezvous_events_total", event="joining") == 2
    metrics.on_event(_event("completed", 3.25, round_=2, rank=1, world_size=2))
    assert _value(metrics, "rdzv_rendezvous_duration_seconds_sum") == 1.25


def test_rounds_are_counted_by_outcome() -> None:
    metrics = RendezvousMetrics("job", "n1")
    for outcome in (Outcome.FAILED, Outcome.FAILED, Outcome.SUCCEEDED):
        metrics.on_round_end(RoundRecord(1, 0, 1, 0.1, 0.0, outcome=outcome))
    assert _value(metrics, "rdzv_agent_rounds_total", outcome="failed") == 2
    assert _value(metrics, "rdzv_agent_rounds_total", outcome="succeeded") == 1


def test_set_node_relabels_the_series() -> None:
    metrics = RendezvousMetrics("job")
    metrics.set_node("n1")
    assert _value(metrics, "rdzv_rank") == -1


def test_two_nodes_in_one_process_have_their_own_registries() -> None:
    a, b = RendezvousMetrics("job", "n1"), RendezvousMetrics("job", "n1")
    a.on_event(_event("joining", 1.0))
    assert _value(b, "rdzv_rendezvous_events_total", event="joining") is None


def test_the_server_answers_on_its_port_and_closes() -> None:
    metrics = RendezvousMetrics("job", "n1")
    with MetricsServer(metrics, 0, "127.0.0.1") as server:
        body = urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5).read().decode()
    assert 'rdzv_rank{node="n1",run_id="job"} -1.0' in body


def test_a_bad_port_names_the_value() -> None:
    with pytest.raises(ValueError, match="70000"):
        MetricsServer(RendezvousMetrics("job"), 70000)
