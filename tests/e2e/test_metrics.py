"""``rdzv run --metrics-port``: each agent serves Prometheus metrics of its node, scraped here by
the worker it runs (so the scrape happens while the round is live), against a real Redis."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import pytest

from rdzv_core.utils import get_free_port
from tests.e2e.test_cli import Agents, agents, py, rdzv  # noqa: F401  (fixture)

pytest.importorskip("prometheus_client")

pytestmark = pytest.mark.e2e


def _scrape_to(port: int, out: Path) -> list[str]:
    return py(
        "import urllib.request, pathlib; "
        f"body = urllib.request.urlopen('http://127.0.0.1:{port}/metrics', timeout=10).read().decode(); "
        f"pathlib.Path({str(out)!r}).write_text(body)"
    )


def _sample(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no sample {name}{labels} in:\n{text}")


def test_each_agent_serves_its_rank_world_size_and_events(agents: Agents, tmp_path: Path) -> None:  # noqa: F811
    ports = [get_free_port(), get_free_port()]
    for i, port in enumerate(ports):
        agents.start(
            _scrape_to(port, tmp_path / f"metrics{i}.txt"),
            extra=["--metrics-port", str(port), "--metrics-addr", "127.0.0.1"],
        )
    assert agents.wait() == [0, 0], agents.logs()
    ranks = set()
    for i in range(2):
        text = (tmp_path / f"metrics{i}.txt").read_text()
        node = agents.summary(i)["node"]
        ranks.add(_sample(text, "rdzv_rank", run_id=agents.run_id, node=node))
        assert _sample(text, "rdzv_world_size", run_id=agents.run_id, node=node) == 2
        assert _sample(text, "rdzv_rendezvous_events_total", event="completed", node=node) == 1
        assert _sample(text, "rdzv_rendezvous_events_total", event="joining", node=node) == 1
        assert _sample(text, "rdzv_rendezvous_duration_seconds_count", node=node) == 1
        assert "secret" not in text and agents.endpoint not in text
    assert ranks == {0, 1}


def test_a_taken_metrics_port_is_a_usage_error(redis_server: Any) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = rdzv(
            "run", "--endpoint", redis_server.endpoint, "--run-id", "metrics-port-taken", "--metrics-port", str(port),
            "--metrics-addr", "127.0.0.1", "--", sys.executable, "-c", "pass",
        )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert f"--metrics-port {port}" in result.stderr
