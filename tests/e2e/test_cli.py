"""``rdzv`` as real processes against a real Redis: run, restart, scale-up, status, close, errors.

Every agent is ``python -m rdzv_core.cli run ...`` in its own process; every wait is bounded.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from rdzv_core.api import RendezvousParameters
from rdzv_core.status import RendezvousStatus, collect_status
from rdzv_core.utils import get_free_port

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
TRAIN = str(REPO / "examples" / "train.py")
#: Every wait of these tests is bounded by this (seconds).
BOUND = 40
FAST = "join_timeout=30,last_call_timeout=0.5,keep_alive_interval=0.5,keep_alive_max_attempt=4,close_timeout=5"


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RDZV_")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def rdzv(*args: str, timeout: float = BOUND) -> subprocess.CompletedProcess[str]:
    """Run one ``rdzv`` command to completion (bounded)."""
    return subprocess.run(
        [sys.executable, "-m", "rdzv_core.cli", *args],
        env=_env(),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


class Agents:
    """Start ``rdzv run`` agents of one run and collect their results."""

    def __init__(self, endpoint: str, run_id: str, tmp: Path) -> None:
        self.endpoint = endpoint
        self.run_id = run_id
        self.tmp = tmp
        self.procs: list[subprocess.Popen[str]] = []

    def start(
        self,
        command: Sequence[str],
        *,
        nnodes: str = "2",
        max_restarts: int = 0,
        conf: str = FAST,
        extra: Sequence[str] = (),
    ) -> subprocess.Popen[str]:
        i = len(self.procs)
        args = [
            sys.executable, "-m", "rdzv_core.cli", "run", "--endpoint", self.endpoint, "--run-id", self.run_id,
            "--nnodes", nnodes, "--max-restarts", str(max_restarts), "--rdzv-conf", conf, "--local-addr", "127.0.0.1",
            "--monitor-interval", "0.1", "--stop-timeout", "2", "--summary-file", str(self.tmp / f"summary{i}.json"),
            *extra, "--", *command,
        ]  # fmt: skip
        proc = subprocess.Popen(args, env=_env(), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.procs.append(proc)
        return proc

    def wait(self, timeout: float = BOUND) -> list[int]:
        deadline = time.monotonic() + timeout
        for proc in self.procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        codes = [proc.poll() for proc in self.procs]
        if None in codes:
            self.kill()
            pytest.fail(f"agents did not finish within {timeout} s: {codes}\n{self.logs()}")
        return codes  # type: ignore[return-value]

    def summary(self, i: int) -> dict[str, Any]:
        return json.loads((self.tmp / f"summary{i}.json").read_text())

    def logs(self) -> str:
        parts = []
        for i, proc in enumerate(self.procs):
            if proc.poll() is not None and proc.stdout and proc.stderr:
                parts.append(
                    f"--- agent {i} (exit {proc.returncode}) ---\n{proc.stdout.read()}{proc.stderr.read()[-4000:]}"
                )
        return "\n".join(parts)

    def kill(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)


@pytest.fixture
def agents(redis_server: Any, tmp_path: Path) -> Iterator[Agents]:
    group = Agents(redis_server.endpoint, f"cli-{uuid.uuid4().hex[:10]}", tmp_path)
    yield group
    group.kill()


def status_of(agents: Agents) -> RendezvousStatus:
    return collect_status(RendezvousParameters("redis", agents.endpoint, agents.run_id, 1, 1))


def wait_status(
    agents: Agents, predicate: Callable[[RendezvousStatus], bool], what: str, timeout: float = BOUND
) -> RendezvousStatus:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = status_of(agents)
        if predicate(status):
            return status
        if any(p.poll() is not None for p in agents.procs):
            pytest.fail(f"an agent exited while waiting for: {what}\n{agents.logs()}")
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for: {what}; last status {status}")


def py(code: str) -> list[str]:
    return [sys.executable, "-c", code]


LONG = py("import time; time.sleep(60)")


# -- runs ----------------------------------------------------------------------------------------


def test_normal_run_two_nodes(agents: Agents) -> None:
    for _ in range(2):
        agents.start([sys.executable, TRAIN, "--steps", "3", "--step-time", "0.05"])
    assert agents.wait() == [0, 0], agents.logs()
    summaries = [agents.summary(i) for i in range(2)]
    assert sorted(s["rounds"][-1]["rank"] for s in summaries) == [0, 1]
    assert all(s["rounds"][-1]["world_size"] == 2 and s["rounds"][-1]["outcome"] == "succeeded" for s in summaries)
    assert all(s["exit_code"] == 0 and s["restarts"] == 0 and s["run_id"] == agents.run_id for s in summaries)
    out = "".join(p.stdout.read() for p in agents.procs if p.stdout)
    assert "step 2 done (sum 3 ok)" in out  # rank 0 checked the all-reduce through the store
    status = status_of(agents)
    assert status.closed and status.world_size == 2


def test_restart_after_worker_failure(agents: Agents, tmp_path: Path) -> None:
    marker = tmp_path / "failed-once"
    for _ in range(2):
        agents.start(
            [
                sys.executable,
                TRAIN,
                "--steps",
                "3",
                "--step-time",
                "0.05",
                "--fail-once",
                str(marker),
                "--fail-rank",
                "1",
                "--fail-step",
                "1",
            ],
            max_restarts=2,
        )
    assert agents.wait() == [0, 0], agents.logs()
    assert marker.exists()
    summaries = [agents.summary(i) for i in range(2)]
    assert sorted(s["restarts"] for s in summaries) == [0, 1]
    failed = next(s for s in summaries if s["restarts"] == 1)
    assert failed["rounds"][0]["outcome"] == "failed" and failed["rounds"][0]["worker_exit_code"] == 1
    assert all(len(s["rounds"]) == 2 and s["rounds"][1]["world_size"] == 2 for s in summaries)
    assert summaries[0]["rounds"][1]["round"] > summaries[0]["rounds"][0]["round"]


def test_failure_beyond_max_restarts_ends_the_job(agents: Agents) -> None:
    fail_rank0 = py("import os,sys,time\nif os.environ['RANK']=='0': sys.exit(5)\ntime.sleep(60)")
    for _ in range(2):
        agents.start(fail_rank0, max_restarts=1)
    t0 = time.monotonic()
    codes = agents.wait()
    assert time.monotonic() - t0 < 20
    # The node whose program failed twice exits with the program's code and closes the
    # rendezvous; the other stops its program and exits 3 (rendezvous closed).
    assert sorted(codes) == [3, 5], agents.logs()
    assert status_of(agents).closed


def test_scale_up_late_agent_makes_running_ones_re_rendezvous(agents: Agents) -> None:
    until_three = py("import os,time\nif os.environ['WORLD_SIZE']!='3': time.sleep(60)")
    agents.start(until_three, nnodes="2:3")
    agents.start(until_three, nnodes="2:3")
    first = wait_status(agents, lambda s: s.complete and s.world_size == 2, "a 2-node round")
    agents.start(until_three, nnodes="2:3")
    assert agents.wait() == [0, 0, 0], agents.logs()
    for i in range(2):
        rounds = agents.summary(i)["rounds"]
        assert rounds[0]["world_size"] == 2 and rounds[0]["outcome"] == "membership_changed"
        assert rounds[-1]["world_size"] == 3 and rounds[-1]["round"] > first.round
    late = agents.summary(2)["rounds"]
    assert len(late) == 1 and late[0]["world_size"] == 3


# -- status and close ---------------------------------------------------------------------------


def test_status_json_and_table_while_running(agents: Agents) -> None:
    for _ in range(2):
        agents.start(LONG)
    wait_status(agents, lambda s: s.complete and s.world_size == 2, "a 2-node round")
    result = rdzv("status", "--endpoint", agents.endpoint, "--run-id", agents.run_id, "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["exists"] is True and doc["complete"] is True and doc["closed"] is False
    assert doc["run_id"] == agents.run_id and doc["backend"] == "redis" and doc["world_size"] == 2
    assert isinstance(doc["round"], int)
    assert [p["rank"] for p in doc["participants"]] == [0, 1]
    assert {p["pid"] for p in doc["participants"]} == {p.pid for p in agents.procs}
    assert all(p["addr"] == "127.0.0.1" and p["role"] == "participant" for p in doc["participants"])
    assert all(p["heartbeat_age"] is not None and 0 <= p["heartbeat_age"] < 2 for p in doc["participants"])
    assert doc["wait_list"] == [] and doc["redundancy_list"] == []
    table = rdzv("status", "--endpoint", agents.endpoint, "--run-id", agents.run_id)
    assert table.returncode == 0
    assert (
        "complete (world size 2)" in table.stdout
        and "participant" in table.stdout
        and str(agents.procs[0].pid) in table.stdout
    )
    # Read-only: the status reads joined nothing and did not disturb the round.
    after = status_of(agents)
    assert after.round == doc["round"] and len(after.participants) == 2 and after.wait_list == [] and after.complete
    assert all(p.poll() is None for p in agents.procs)


def test_status_of_a_forming_round_shows_no_ranks(agents: Agents) -> None:
    agents.start(LONG, nnodes="2")
    status = wait_status(agents, lambda s: len(s.participants) == 1, "one participant")
    doc = json.loads(rdzv("status", "--endpoint", agents.endpoint, "--run-id", agents.run_id, "--json").stdout)
    assert doc["complete"] is False and doc["participants"][0]["rank"] is None
    assert doc["participants"][0]["pid"] == agents.procs[0].pid
    assert status.round == doc["round"]


def test_close_stops_a_running_job(agents: Agents) -> None:
    for _ in range(2):
        agents.start(LONG)
    wait_status(agents, lambda s: s.complete and s.world_size == 2, "a 2-node round")
    result = rdzv("close", "--endpoint", agents.endpoint, "--run-id", agents.run_id)
    assert result.returncode == 0 and "Closed" in result.stdout, result.stderr
    t0 = time.monotonic()
    assert agents.wait(20) == [3, 3], agents.logs()
    assert time.monotonic() - t0 < 10
    assert status_of(agents).closed
    again = rdzv("close", "--endpoint", agents.endpoint, "--run-id", agents.run_id)
    assert again.returncode == 0 and "already closed" in again.stdout
    late = rdzv("run", "--endpoint", agents.endpoint, "--run-id", agents.run_id, "--rdzv-conf", FAST, "--", "true")
    assert late.returncode == 3 and "closed" in late.stderr.splitlines()[-1]


def test_close_of_unknown_run(redis_server: Any) -> None:
    result = rdzv("close", "--endpoint", redis_server.endpoint, "--run-id", f"none-{uuid.uuid4().hex}")
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1 and "nothing to close" in result.stderr


def test_sigterm_is_forwarded_and_the_job_stays_open(agents: Agents, tmp_path: Path) -> None:
    pid_file = tmp_path / "worker.pid"
    proc = agents.start(
        py(f"import os,time; open({str(pid_file)!r},'w').write(str(os.getpid())); time.sleep(60)"), nnodes="1"
    )
    deadline = time.monotonic() + BOUND
    while not (pid_file.exists() and pid_file.read_text()):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    worker = int(pid_file.read_text())
    proc.send_signal(signal.SIGTERM)
    assert agents.wait(15) == [128 + signal.SIGTERM]
    with pytest.raises(ProcessLookupError):
        os.kill(worker, 0)
    assert not status_of(agents).closed
    assert agents.summary(0)["rounds"][0]["outcome"] == "signal"


def test_sigterm_while_waiting_to_join_exits_at_once(agents: Agents) -> None:
    proc = agents.start(LONG, nnodes="2")  # the second node never comes
    wait_status(agents, lambda s: len(s.participants) == 1, "one participant")
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert agents.wait(10) == [128 + signal.SIGTERM]
    assert time.monotonic() - t0 < 5
    assert "while joining" in proc.stderr.read() if proc.stderr else True


# -- errors --------------------------------------------------------------------------------------


def _one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def test_bad_nnodes(redis_server: Any) -> None:
    result = rdzv(
        "run", "--endpoint", redis_server.endpoint, "--run-id", "x", "--nnodes", "3:2", "--", "true", timeout=20
    )
    assert result.returncode == 2
    assert "MIN (3) must be <= MAX (2)" in _one_error_line(result)


def test_unknown_backend() -> None:
    result = rdzv("run", "--backend", "nosuch", "--run-id", "x", "--", "true", timeout=20)
    assert result.returncode == 2
    assert "'nosuch' is not registered" in _one_error_line(result)


def test_unreachable_endpoint_fails_fast_in_one_line() -> None:
    endpoint = f"127.0.0.1:{get_free_port()}"
    conf = "retry_timeout=0.5,connect_timeout=0.5"
    t0 = time.monotonic()
    run = rdzv("run", "--endpoint", endpoint, "--run-id", "x", "--rdzv-conf", conf, "--", "true", timeout=30)
    assert run.returncode == 3
    assert "unreachable" in _one_error_line(run) and endpoint in run.stderr
    status = rdzv("status", "--endpoint", endpoint, "--run-id", "x", "--rdzv-conf", conf, timeout=30)
    assert status.returncode == 3 and "unreachable" in _one_error_line(status)
    assert time.monotonic() - t0 < 20


def test_secrets_are_never_printed(redis_server: Any) -> None:
    endpoint = f"redis://user:s3cr3tpw@127.0.0.1:{get_free_port()}/0"
    result = rdzv(
        "status",
        "--endpoint",
        endpoint,
        "--run-id",
        "x",
        "--rdzv-conf",
        "retry_timeout=0.3,connect_timeout=0.3,password=hunter22",
        timeout=30,
    )
    assert result.returncode == 3
    assert "s3cr3tpw" not in result.stderr + result.stdout and "hunter22" not in result.stderr + result.stdout


def test_standalone_single_node() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "rdzv_core.cli", "run", "--standalone", "--", sys.executable, TRAIN, "--steps", "2", "--step-time", "0.05"],
        env=_env(), cwd=REPO, capture_output=True, text=True, timeout=BOUND,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "step 1 done (sum 1 ok)" in result.stdout and "finished" in result.stdout


def _server_process(*args: str) -> subprocess.Popen[str]:
    """``rdzv <args>`` (a server command) in the background, its output piped."""
    return subprocess.Popen(
        [sys.executable, "-m", "rdzv_core.cli", *args],
        env=_env(),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_server_command_prints_endpoint_and_stops_on_sigterm() -> None:
    proc = _server_process("server", "redis")
    try:
        assert proc.stdout is not None
        endpoint = proc.stdout.readline().strip()
        host, _, port = endpoint.partition(":")
        assert host == "127.0.0.1" and port.isdigit()
        status = rdzv("status", "--endpoint", endpoint, "--run-id", "nothing-here", "--json")
        assert status.returncode == 1 and json.loads(status.stdout)["exists"] is False
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


DUMP_ENV = py(
    "import json, os, sys; json.dump({'env': dict(os.environ), 'argv': sys.argv}, open(os.environ['DUMP'], 'w'))"
)


def test_no_secret_reaches_the_worker(own_redis_server: Any, tmp_path: Path) -> None:
    """A password given in --rdzv-conf and in the endpoint URL reaches neither the worker's
    environment nor its argv; with the backend's password variable set (the user's choice),
    the worker can still open the round's store."""
    secret = "w0rker-s3cret"
    server = own_redis_server(password=secret)
    group = Agents(f"redis://:{secret}@{server.endpoint}/0", f"cli-{uuid.uuid4().hex[:10]}", tmp_path)
    dump = tmp_path / "env.json"
    env = {**_env(), "DUMP": str(dump)}
    args = [
        sys.executable, "-m", "rdzv_core.cli", "run", "--endpoint", group.endpoint, "--run-id", group.run_id, "--nnodes", "1",
        "--rdzv-conf", f"{FAST},password={secret}", "--local-addr", "127.0.0.1", "--", *DUMP_ENV,
    ]  # fmt: skip
    result = subprocess.run(args, env=env, cwd=REPO, capture_output=True, text=True, timeout=BOUND)
    assert result.returncode == 0, result.stderr
    seen = json.loads(dump.read_text())
    assert secret not in json.dumps(seen) and secret not in result.stdout + result.stderr
    assert (
        seen["env"]["RDZV_ENDPOINT"] == f"redis://{server.endpoint}/0"
        and "last_call_timeout" in seen["env"]["RDZV_CONF"]
    )

    store_user = py(
        "from rdzv_core.agent import open_worker_store; s = open_worker_store(); s.set('k', b'v'); assert s.get('k') == b'v'; s.close()"
    )
    args[args.index("--run-id") + 1] = f"cli-{uuid.uuid4().hex[:10]}"
    args[args.index("--") + 1 :] = store_user
    ok = subprocess.run(
        args, env={**env, "RDZV_REDIS_PASSWORD": secret}, cwd=REPO, capture_output=True, text=True, timeout=BOUND
    )
    assert ok.returncode == 0, ok.stderr


def test_a_password_file_reaches_the_worker_as_a_path_only(own_redis_server: Any, tmp_path: Path) -> None:
    """With --rdzv-conf password_file=PATH the agent and the worker both read the password
    from the file: the worker's environment holds the path, never the secret, and the
    worker opens the round's store with it."""
    secret = "f1le-s3cret"
    server = own_redis_server(password=secret)
    secret_file = tmp_path / "redis.pw"
    secret_file.write_text(secret + "\n")
    dump = tmp_path / "env.json"
    worker = py(
        "import json, os, sys; from rdzv_core.agent import open_worker_store; s = open_worker_store(); s.set('k', b'v'); "
        "assert s.get('k') == b'v'; s.close(); json.dump({'env': dict(os.environ), 'argv': sys.argv}, open(os.environ['DUMP'], 'w'))"
    )
    args = [
        sys.executable, "-m", "rdzv_core.cli", "run", "--endpoint", server.endpoint, "--run-id", f"cli-{uuid.uuid4().hex[:10]}",
        "--nnodes", "1", "--rdzv-conf", f"{FAST},password_file={secret_file}", "--local-addr", "127.0.0.1", "--", *worker,
    ]  # fmt: skip
    result = subprocess.run(
        args, env={**_env(), "DUMP": str(dump)}, cwd=REPO, capture_output=True, text=True, timeout=BOUND
    )
    assert result.returncode == 0, result.stderr
    seen = json.loads(dump.read_text())
    assert secret not in json.dumps(seen) and secret not in result.stdout + result.stderr
    assert f"password_file={secret_file}" in seen["env"]["RDZV_CONF"]


def test_torchrun_pet_variables_configure_rdzv_run() -> None:
    """PET_STANDALONE and PET_NNODES, as torchrun's environment sets them, are honoured."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RDZV_", "PET_"))}
    env.update(PET_STANDALONE="1", PET_NNODES="1")
    done = subprocess.run(
        [sys.executable, "-m", "rdzv_core.cli", "run", "--", sys.executable, "-c", "import os; print('rank', os.environ['RANK'])"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "rank 0" in done.stdout


def test_server_cluster_command_prints_every_node_and_status_reads_it() -> None:
    """``rdzv server redis --cluster``: the first line lists the six nodes; ``rdzv status``
    with ``cluster=true`` reads the cluster (issue #16)."""
    proc = _server_process("server", "redis", "--cluster")
    try:
        assert proc.stdout is not None
        endpoint = proc.stdout.readline().strip()
        nodes = endpoint.split(",")
        assert len(nodes) == 6 and all(n.startswith("127.0.0.1:") and n.partition(":")[2].isdigit() for n in nodes)
        status = rdzv(
            "status", "--endpoint", endpoint, "--rdzv-conf", "cluster=true", "--run-id", "nothing-here", "--json"
        )
        assert status.returncode == 1 and json.loads(status.stdout)["exists"] is False, status.stderr
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        assert "RDZV_CONF=cluster=true" in (proc.stderr.read() if proc.stderr else "")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
