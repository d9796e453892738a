"""The elastic agent behind ``rdzv run``: agents in threads on the in-process ``memory`` backend,
each supervising a real worker subprocess. No server needed."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
import uuid
from collections.abc import Sequence

import pytest

from rdzv_core.agent import (
    EXIT_NOT_FOUND,
    EXIT_RENDEZVOUS,
    AgentConfig,
    AgentResult,
    ElasticAgent,
    WorkerEnv,
    exit_code_of,
    open_worker_store,
)
from rdzv_core.api import RendezvousParameters
from rdzv_core.registry import get_rendezvous_handler

pytestmark = pytest.mark.unit

BOUND = 30.0
# Dead after 1.5 s of silence: a live node on a loaded machine is not declared dead.
CONF = {"last_call_timeout": "0.3", "keep_alive_interval": "0.25", "keep_alive_max_attempt": "6", "join_timeout": "20"}


def make_agent(run_id: str, command: Sequence[str], nnodes: tuple[int, int] = (2, 2), **config: object) -> ElasticAgent:
    params = RendezvousParameters("memory", "", run_id, nnodes[0], nnodes[1], local_addr="127.0.0.1", **CONF)
    handler = get_rendezvous_handler(params)
    return ElasticAgent(handler, AgentConfig(list(command), monitor_interval=0.05, stop_timeout=2, **config))  # type: ignore[arg-type]


def run_all(agents: Sequence[ElasticAgent], stagger: float = 0.0) -> list[AgentResult]:
    results: list[AgentResult | None] = [None] * len(agents)

    def target(i: int) -> None:
        results[i] = agents[i].run()

    threads = []
    for i in range(len(agents)):
        thread = threading.Thread(target=target, args=(i,), daemon=True)
        thread.start()
        threads.append(thread)
        time.sleep(stagger)
    for thread in threads:
        thread.join(BOUND)
    assert all(r is not None for r in results), "an agent did not finish in time"
    return results  # type: ignore[return-value]


def py(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_exit_code_of() -> None:
    assert exit_code_of(0) == 0 and exit_code_of(3) == 3 and exit_code_of(-9) == 137 and exit_code_of(-15) == 143


def test_agent_config_validation() -> None:
    with pytest.raises(ValueError, match="command"):
        AgentConfig([])
    with pytest.raises(ValueError, match="max_restarts"):
        AgentConfig(["x"], max_restarts=-1)
    with pytest.raises(ValueError, match="monitor_interval"):
        AgentConfig(["x"], monitor_interval=0)


def test_two_agents_succeed_and_close(tmp_path) -> None:
    run_id = f"a-{uuid.uuid4().hex}"
    out = tmp_path / "env"
    out.mkdir()
    code = f"import os,json; json.dump(dict(os.environ), open(os.path.join({str(out)!r}, os.environ['RANK']), 'w'))"
    agents = [make_agent(run_id, py(code)) for _ in range(2)]
    results = run_all(agents)
    assert [r.exit_code for r in results] == [0, 0]
    assert sorted(r.rounds[-1].rank for r in results) == [0, 1]
    assert all(r.rounds[-1].outcome == "succeeded" for r in results)
    assert agents[0].handler.is_closed()
    import json

    env = json.loads((out / "1").read_text())
    assert env["WORLD_SIZE"] == "2" and env["RDZV_RUN_ID"] == run_id and env["MASTER_ADDR"] == "127.0.0.1"
    assert int(env["MASTER_PORT"]) > 0 and env["RDZV_STORE_PREFIX"].startswith(f"rdzv.{run_id}.")
    parsed = WorkerEnv.from_environ(env)
    assert parsed.rank == 1 and parsed.world_size == 2 and parsed.restart_count == 0


def test_failure_is_restarted_then_succeeds(tmp_path) -> None:
    run_id = f"a-{uuid.uuid4().hex}"
    marker = tmp_path / "failed-once"
    code = f"import os,sys; m={str(marker)!r}\nif os.environ['RANK']=='1' and not os.path.exists(m): open(m,'w').close(); sys.exit(4)"
    agents = [make_agent(run_id, py(code), max_restarts=2) for _ in range(2)]
    results = run_all(agents)
    assert [r.exit_code for r in results] == [0, 0]
    assert sorted(r.restarts for r in results) == [0, 1]
    failed = next(r for r in results if r.restarts == 1)
    assert failed.rounds[0].outcome == "failed" and failed.rounds[0].worker_exit_code == 4
    other = next(r for r in results if r.restarts == 0)
    assert other.rounds[0].outcome in ("round_broken", "membership_changed")
    assert all(len(r.rounds) == 2 and r.rounds[-1].outcome == "succeeded" for r in results)


def test_failure_beyond_max_restarts_closes_the_rendezvous() -> None:
    run_id = f"a-{uuid.uuid4().hex}"
    code = "import os,sys,time\nif os.environ['RANK']=='0': sys.exit(9)\ntime.sleep(30)"
    agents = [make_agent(run_id, py(code), max_restarts=0) for _ in range(2)]
    t0 = time.monotonic()
    results = run_all(agents)
    assert sorted(r.exit_code for r in results) == sorted([9, EXIT_RENDEZVOUS])
    assert time.monotonic() - t0 < 10
    assert agents[0].handler.is_closed()


def test_scale_up_restarts_the_running_agents() -> None:
    run_id = f"a-{uuid.uuid4().hex}"
    # The workers run until the world has 3 nodes.
    code = "import os,sys,time\nif os.environ['WORLD_SIZE']!='3': time.sleep(30)"
    agents = [make_agent(run_id, py(code), nnodes=(2, 3)) for _ in range(3)]
    results: list[AgentResult | None] = [None, None, None]
    threads = [
        threading.Thread(target=lambda i=i: results.__setitem__(i, agents[i].run()), daemon=True) for i in range(3)
    ]
    threads[0].start()
    threads[1].start()
    deadline = time.monotonic() + BOUND
    while not (agents[0].handler.state.complete and agents[0].handler.state.world_size == 2):  # type: ignore[attr-defined]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(0.3)
    threads[2].start()
    for thread in threads:
        thread.join(BOUND)
    assert [r.exit_code for r in results if r] == [0, 0, 0]
    assert [r.rounds[0].outcome for r in results[:2] if r] == ["membership_changed"] * 2
    assert all(r.rounds[-1].world_size == 3 for r in results if r)


def test_request_stop_forwards_the_signal() -> None:
    run_id = f"a-{uuid.uuid4().hex}"
    agent = make_agent(run_id, py("import time; time.sleep(30)"), nnodes=(1, 1))
    result: list[AgentResult] = []
    thread = threading.Thread(target=lambda: result.append(agent.run()), daemon=True)
    thread.start()
    deadline = time.monotonic() + BOUND
    while agent._worker is None:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    pid = agent._worker.pid
    agent.request_stop(signal.SIGTERM)
    thread.join(BOUND)
    assert result and result[0].exit_code == 128 + signal.SIGTERM
    assert result[0].rounds[0].outcome == "signal"
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert not agent.handler.is_closed()  # a stopped node leaves; it does not end the job
    agent.handler._stop_heartbeats()  # type: ignore[attr-defined]  # (a CLI process would exit here)


def test_closed_rendezvous_stops_the_worker() -> None:
    run_id = f"a-{uuid.uuid4().hex}"
    agent = make_agent(run_id, py("import time; time.sleep(30)"), nnodes=(1, 1))
    result: list[AgentResult] = []
    thread = threading.Thread(target=lambda: result.append(agent.run()), daemon=True)
    thread.start()
    deadline = time.monotonic() + BOUND
    while agent._worker is None:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    closer = get_rendezvous_handler(RendezvousParameters("memory", "", run_id, 1, 1))
    closer.set_closed()
    thread.join(BOUND)
    assert result and result[0].exit_code == EXIT_RENDEZVOUS and result[0].rounds[0].outcome == "closed"


def test_missing_program() -> None:
    agent = make_agent(f"a-{uuid.uuid4().hex}", ["/nonexistent/program"], nnodes=(1, 1))
    result = agent.run()
    assert result.exit_code == EXIT_NOT_FOUND and result.rounds[0].outcome == "not_started"


def test_open_worker_store_requires_rdzv_run() -> None:
    with pytest.raises(KeyError):
        open_worker_store({})
    env = {
        "RANK": "0",
        "WORLD_SIZE": "1",
        "RDZV_BACKEND": "memory",
        "RDZV_RUN_ID": "x",
        "RDZV_STORE_PREFIX": "rdzv.x.0",
    }
    with pytest.raises(ValueError, match="no store"):
        open_worker_store(env)
