"""torchrun on rdzv: real ``python -m torch.distributed.run`` agents, real worker processes,
gloo on CPU, against a real Redis or etcd (all on 127.0.0.1).

* smoke — two agents x two workers all-reduce and check the sum (``redis``, ``etcd-v3``);
* scale-up — ``--nnodes=2:3``: a third agent started during the run is admitted in a new round;
* kill -9 — ``--nnodes=2:3 --max-restarts=3``: a node (agent and its workers) is killed with
  SIGKILL mid-run; the survivors re-rendezvous and finish.

Every wait is bounded; a failure shows the tails of the agents' logs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

pytestmark = pytest.mark.e2e
pytest.importorskip("torch", reason="torch is not installed (pip install 'rdzv[torch]'): the torchrun tests need it")

SCRIPTS = Path(__file__).parent / "torch_scripts"
REPO = Path(__file__).resolve().parents[2]
#: Upper bound (seconds) of one torchrun job, and of each phase of the elastic tests. Starting
#: workers (importing torch) dominates and takes tens of seconds on a loaded 2-core machine;
#: two phases plus the end stay below pytest's 300 s timeout.
JOB_BOUND = 90
#: ``--rdzv-conf``: short timeouts so that rounds form and dead nodes are found in seconds.
RDZV_CONF = "join_timeout=60,last_call_timeout=1,keep_alive_interval=1,keep_alive_max_attempt=3,close_timeout=10"


def torchrun_command(
    backend: str,
    endpoint: str,
    run_id: str,
    nnodes: str,
    nproc: int,
    script: str,
    max_restarts: int = 0,
    conf: str = "",
) -> list[str]:
    """The torchrun command line of one agent (``python -m torch.distributed.run`` of this
    interpreter); ``conf`` adds ``--rdzv-conf`` items."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nnodes={nnodes}",
        f"--nproc-per-node={nproc}",
        f"--rdzv-backend={backend}",
        f"--rdzv-endpoint={endpoint}",
        f"--rdzv-id={run_id}",
        f"--rdzv-conf={RDZV_CONF}{',' + conf if conf else ''}",
        f"--max-restarts={max_restarts}",
        "--monitor-interval=0.2",
        "--local-addr=127.0.0.1",
        str(SCRIPTS / script),
    ]


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
    return children


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (Linux ``/proc``); torchrun's workers run in sessions of
    their own, so a process group kill would miss them."""
    children = _children_map()
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


class Agent:
    """One torchrun agent process with its log file."""

    def __init__(self, name: str, command: list[str], out: Path, log_dir: Path) -> None:
        self.name = name
        self.log = log_dir / f"agent-{name}.log"
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p),
            "OMP_NUM_THREADS": "1",
            "LOGLEVEL": "INFO",  # torchrun's own log lines, for the failure report
            "RDZV_E2E_OUT": str(out),
            "RDZV_E2E_NODE": name,
        }
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(log_dir))

    def wait(self, timeout: float) -> int | None:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill_node(self) -> list[int]:
        """SIGKILL the agent and its workers at once, as if the machine died."""
        tree = process_tree(self.proc.pid)
        for pid in tree:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(10)
        return tree

    def tail(self, lines: int = 40) -> str:
        try:
            text = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(text[-lines:])


@pytest.fixture
def job(tmp_path: Path) -> Iterator[Any]:
    """Start agents with ``job.start(name, command)``; ``job.out`` is the workers' output
    directory. Leftover agents (and their workers) are killed at teardown."""

    class Job:
        def __init__(self) -> None:
            self.out = tmp_path / "out"
            self.agents: list[Agent] = []

        def start(self, name: str, command: list[str]) -> Agent:
            agent = Agent(name, command, self.out, tmp_path)
            self.agents.append(agent)
            return agent

        def logs(self) -> str:
            return "\n".join(f"----- agent {a.name} (rc={a.proc.poll()}) -----\n{a.tail()}" for a in self.agents)

        def wait_all(self, agents: list[Agent], timeout: float = JOB_BOUND) -> list[int | None]:
            deadline = time.monotonic() + timeout
            return [a.wait(max(0.1, deadline - time.monotonic())) for a in agents]

        def progress(self) -> dict[str, Any] | None:
            try:
                return json.loads((self.out / "progress.json").read_text())
            except (OSError, ValueError):
                return None

        def events(self) -> list[dict[str, Any]]:
            try:
                lines = (self.out / "events.jsonl").read_text().splitlines()
            except OSError:
                return []
            return [json.loads(line) for line in lines if line.strip()]

        def wait_for(self, what: str, predicate: Callable[[], bool], timeout: float = JOB_BOUND) -> None:
            deadline = time.monotonic() + timeout
            while not predicate():
                dead = [a.name for a in self.agents if a.proc.poll() not in (None, -signal.SIGKILL)]
                if dead or time.monotonic() > deadline:
                    pytest.fail(
                        f"{what}: not seen within {timeout} s (exited agents: {dead}); progress={self.progress()}\n{self.logs()}"
                    )
                time.sleep(0.1)

    job = Job()
    job.out.mkdir()
    yield job
    for agent in job.agents:
        if agent.proc.poll() is None:
            agent.kill_node()


def run_id() -> str:
    return f"torchrun-{uuid.uuid4().hex[:10]}"


@pytest.mark.parametrize("setup", ["redis", "redis-password", "redis-cluster", "etcd-v3"])
def test_torchrun_two_nodes_allreduce(setup, request, job):
    """``redis-password``: a Redis with ``requirepass``; the password comes in ``--rdzv-conf``
    (one worker per node: it is about the configuration, not the workers). ``redis-cluster``:
    a local Redis Cluster, ``--rdzv-endpoint`` two of its nodes, ``--rdzv-conf cluster=true``."""
    conf, nproc = "", 2
    if setup == "redis":
        backend, server = "redis", request.getfixturevalue("redis_server")
    elif setup == "redis-cluster":
        backend, cluster = "redis", request.getfixturevalue("redis_cluster")
        server = SimpleNamespace(endpoint=",".join(n.endpoint for n in cluster.nodes[:2]))  # node1:p1,node2:p2
        conf, nproc = "cluster=true", 1
    elif setup == "redis-password":
        backend, server = "redis", request.getfixturevalue("own_redis_server")(password="torchrun-s3cret")
        conf, nproc = "password=torchrun-s3cret", 1
    else:
        backend, server = "etcd-v3", request.getfixturevalue("etcd_server")
    command = torchrun_command(backend, server.endpoint, run_id(), "2", nproc, "allreduce.py", conf=conf)
    agents = [job.start(name, command) for name in ("a", "b")]
    codes = job.wait_all(agents)
    assert codes == [0, 0], job.logs()
    world = 2 * nproc
    records = [json.loads((job.out / f"rank{r}.json").read_text()) for r in range(world)]
    assert [r["rank"] for r in records] == list(range(world))
    assert all(r["world_size"] == world and r["sum"] == r["expected"] == world * (world + 1) / 2 for r in records)
    assert sorted((r["group_rank"], r["local_rank"]) for r in records) == [
        (g, lr) for g in range(2) for lr in range(nproc)
    ]
    assert len({r["master"] for r in records}) == 1 and records[0]["master"].startswith("127.0.0.1:")
    assert {r["use_agent_store"] for r in records} == {"False"}


def test_torchrun_scale_up_admits_a_third_node(redis_server, job):
    command = torchrun_command("redis", redis_server.endpoint, run_id(), "2:3", 1, "elastic_train.py", max_restarts=3)
    first = [job.start(name, command) for name in ("a", "b")]
    job.wait_for(
        "a round of 2 nodes making progress",
        lambda: (p := job.progress()) is not None and p["world_size"] == 2 and p["step"] >= 3,
    )
    late = job.start("c", command)
    job.wait_for(
        "a round of 3 nodes making progress",
        lambda: (p := job.progress()) is not None and p["world_size"] == 3 and p["step"] >= 3,
    )
    assert sorted(job.progress()["nodes"]) == ["a", "b", "c"]
    (job.out / "stop").touch()
    codes = job.wait_all([*first, late])
    assert codes == [0, 0, 0], job.logs()
    events = job.events()
    assert {e["world_size"] for e in events if e["event"] == "start" and e["node"] in ("a", "b")} == {2, 3}
    assert {e["world_size"] for e in events if e["event"] == "start" and e["node"] == "c"} == {3}
    done = [e for e in events if e["event"] == "done"]
    assert sorted(e["node"] for e in done) == ["a", "b", "c"] and {e["world_size"] for e in done} == {3}


def test_torchrun_kill9_node_survivors_finish(redis_server, job):
    command = torchrun_command("redis", redis_server.endpoint, run_id(), "2:3", 1, "elastic_train.py", max_restarts=3)
    agents = {name: job.start(name, command) for name in ("a", "b", "c")}
    job.wait_for(
        "a round of 3 nodes making progress",
        lambda: (p := job.progress()) is not None and p["world_size"] == 3 and p["step"] >= 3,
    )
    killed_at = time.monotonic()
    agents["c"].kill_node()

    def survivors_progress() -> bool:
        p = job.progress()
        return p is not None and p["world_size"] == 2 and sorted(p["nodes"]) == ["a", "b"] and p["step"] >= 3

    job.wait_for("the survivors re-rendezvous and make progress", survivors_progress)
    recovery = time.monotonic() - killed_at
    (job.out / "stop").touch()
    codes = job.wait_all([agents["a"], agents["b"]])
    assert codes == [0, 0], job.logs()
    assert agents["c"].proc.returncode == -signal.SIGKILL
    done = [e for e in job.events() if e["event"] == "done"]
    assert sorted(e["node"] for e in done) == ["a", "b"] and {e["world_size"] for e in done} == {2}
    assert recovery < JOB_BOUND, f"recovery took {recovery:.1f} s"
