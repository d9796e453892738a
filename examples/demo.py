"""The one-command local demo: an elastic job that loses a node and re-forms.

    python examples/demo.py            # about 10 s; exit code 0 when everything went right
    python examples/demo.py --verbose  # also stream the agents' and workers' output

What it does, all on this machine:

1. starts an embedded Redis (``rdzv_redis.server.RedisServer``, a free port on 127.0.0.1);
2. starts 3 agents as separate processes, ``rdzv run --nnodes 2:3 --max-restarts 3`` with
   short timeouts (``last_call_timeout=1``, ``keep_alive_interval=0.5``,
   ``keep_alive_max_attempt=4``), each running ``examples/train.py`` (ranks add to a counter
   in the round's store every step; rank 0 checks the total and keeps a checkpoint);
3. once the 3-node round trains, kills one agent with SIGKILL (its worker dies with it);
4. the survivors notice the missing keep-alives (about 2 s), re-rendezvous as a 2-node
   round, resume from the checkpoint and finish; the rendezvous is then closed;
5. prints a timeline and a summary (ranks per round, time to rendezvous, time to re-form)
   and checks everything: survivors exit 0, the last round has 2 nodes, every step ran,
   the killed agent's worker is gone, the rendezvous is closed. Any failed check -> exit 1.

Needs the project installed (``pip install -e '.[redis]'``) and ``redis-server`` on PATH.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import IO, Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from rdzv_core.api import RendezvousParameters  # noqa: E402
from rdzv_core.status import RendezvousStatus, open_backend, read_status  # noqa: E402

AGENTS = 3
NNODES = "2:3"
STEPS = 12
STEP_TIME = 0.25
RDZV_CONF = "join_timeout=30,last_call_timeout=1,keep_alive_interval=0.5,keep_alive_max_attempt=4,close_timeout=5,heartbeat_timeout=2"
#: Everything must be over by then (seconds); the demo fails otherwise.
DEADLINE = 50.0


@dataclass
class Agent:
    index: int
    process: subprocess.Popen[bytes]
    log_path: str
    summary_path: str
    log: IO[bytes] = field(repr=False)

    @property
    def name(self) -> str:
        return f"agent{self.index}"


class Demo:
    def __init__(self, verbose: bool) -> None:
        self.verbose = verbose
        self.t0 = time.monotonic()
        self.failures: list[str] = []
        self.timeline: list[tuple[float, str]] = []

    # -- output -----------------------------------------------------------------------------

    def now(self) -> float:
        return time.monotonic() - self.t0

    def event(self, message: str) -> None:
        stamp = self.now()
        self.timeline.append((stamp, message))
        print(f"[demo t={stamp:5.2f}s] {message}", flush=True)

    def check(self, ok: bool, what: str) -> None:
        print(f"  [{'ok' if ok else 'FAIL'}] {what}", flush=True)
        if not ok:
            self.failures.append(what)

    # -- pieces -----------------------------------------------------------------------------

    def start_agent(self, index: int, endpoint: str, run_id: str, tmp: str) -> Agent:
        log_path = os.path.join(tmp, f"agent{index}.log")
        summary_path = os.path.join(tmp, f"agent{index}.json")
        command = [
            sys.executable, "-m", "rdzv_core.cli", "run",
            "--backend", "redis", "--endpoint", endpoint, "--run-id", run_id,
            "--nnodes", NNODES, "--max-restarts", "3", "--rdzv-conf", RDZV_CONF,
            "--local-addr", "127.0.0.1", "--monitor-interval", "0.1", "--stop-timeout", "2",
            "--exit-barrier-timeout", "20", "--summary-file", summary_path,
            "--",
            sys.executable, os.path.join(REPO, "examples", "train.py"),
            "--steps", str(STEPS), "--step-time", str(STEP_TIME), "--checkpoint", os.path.join(tmp, "checkpoint.json"),
        ]  # fmt: skip
        env = dict(os.environ)
        env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
        env["PYTHONUNBUFFERED"] = "1"
        for var in ("RDZV_BACKEND", "RDZV_ENDPOINT", "RDZV_RUN_ID", "RDZV_CONF", "RDZV_LOG_LEVEL"):
            env.pop(var, None)
        log = open(log_path, "wb")
        process = subprocess.Popen(
            command, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        agent = Agent(index, process, log_path, summary_path, log)
        threading.Thread(target=self._pump, args=(agent,), daemon=True).start()
        return agent

    def _pump(self, agent: Agent) -> None:
        assert agent.process.stdout is not None
        for line in agent.process.stdout:
            agent.log.write(line)
            agent.log.flush()
            if self.verbose:
                sys.stdout.write(f"  {agent.name} | {line.decode(errors='replace')}")
                sys.stdout.flush()

    def wait_for(self, read: Any, predicate: Any, timeout: float, what: str) -> RendezvousStatus | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = read()
            if predicate(status):
                return status
            time.sleep(0.05)
        self.check(False, f"{what} within {timeout:.0f} s")
        return None


def _tail(path: str, lines: int = 25) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return "".join(handle.readlines()[-lines:])
    except OSError:
        return "(no log)\n"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _worker_pids(log_path: str) -> set[int]:
    """The worker pids printed by train.py (``pid=NNN``) in an agent's log."""
    pids = set()
    for line in _tail(log_path, 10_000).splitlines():
        if line.startswith("[train ") and " pid=" in line:
            pids.add(int(line.split(" pid=")[1].split("]")[0]))
    return pids


def run_demo(verbose: bool) -> int:
    try:
        from rdzv_redis.server import RedisServer
    except ImportError as exc:
        print(
            f"demo: the Redis plug-in is not importable ({exc}); install the project: pip install -e '.[redis]'",
            file=sys.stderr,
        )
        return 1
    demo = Demo(verbose)
    run_id = f"demo-{uuid.uuid4().hex[:8]}"
    agents: list[Agent] = []
    with tempfile.TemporaryDirectory(prefix="rdzv-demo-") as tmp, RedisServer() as server:
        endpoint = server.endpoint
        demo.event(f"embedded Redis on {endpoint}; run id {run_id}")
        session = open_backend(RendezvousParameters("redis", endpoint, run_id, 1, 1))

        def read() -> RendezvousStatus:
            return read_status(session.backend, run_id, endpoint=endpoint)

        try:
            for i in range(AGENTS):
                agents.append(demo.start_agent(i, endpoint, run_id, tmp))
            demo.event(
                f"started {AGENTS} agents: rdzv run --nnodes {NNODES} -- python examples/train.py --steps {STEPS}"
            )

            full = demo.wait_for(
                read,
                lambda s: s.exists and s.complete and s.world_size == AGENTS and not s.closed,
                45,
                f"a {AGENTS}-node round forms",
            )
            if full is None:
                for agent in agents:
                    print(
                        f"--- {agent.name} (exit {agent.process.poll()}) ---\n{_tail(agent.log_path)}", file=sys.stderr
                    )
                return 1
            by_pid = {a.process.pid: a for a in agents}
            ranks_first = {by_pid[n.pid].name: n.rank for n in full.participants if n.pid in by_pid}
            demo.event(
                f"round {full.round} formed with {full.world_size} nodes: "
                + ", ".join(f"{k}=rank {v}" for k, v in sorted(ranks_first.items()))
            )

            victim_node = next(n for n in full.participants if n.rank == 1)
            victim = by_pid[victim_node.pid]
            # Kill mid-run: once the victim's worker of this round has finished a step.
            marker = f"[train round={full.round} rank=1/{AGENTS} "
            deadline = time.monotonic() + 30
            while not any(
                line.startswith(marker) and "] step " in line for line in _tail(victim.log_path, 10_000).splitlines()
            ):
                if time.monotonic() > deadline or victim.process.poll() is not None:
                    demo.check(False, f"{victim.name}'s worker trains in round {full.round} within 30 s")
                    break
                time.sleep(0.05)
            victim_workers = _worker_pids(victim.log_path)
            victim.process.send_signal(signal.SIGKILL)
            t_kill = demo.now()
            demo.event(f"kill -9 {victim.name} (pid {victim.process.pid}, rank 1 of round {full.round})")

            reformed = demo.wait_for(
                read,
                lambda s: s.exists and s.round > full.round and s.complete and s.world_size == AGENTS - 1,
                30,
                f"the survivors re-form a {AGENTS - 1}-node round",
            )
            t_reformed = demo.now()
            if reformed is not None:
                ranks_second = {by_pid[n.pid].name: n.rank for n in reformed.participants if n.pid in by_pid}
                demo.event(
                    f"round {reformed.round} formed with {reformed.world_size} nodes: "
                    + ", ".join(f"{k}=rank {v}" for k, v in sorted(ranks_second.items()))
                    + f" ({t_reformed - t_kill:.2f} s after the kill)"
                )

            deadline = time.monotonic() + max(5.0, DEADLINE - demo.now())
            for agent in agents:
                try:
                    agent.process.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    pass
            demo.event("agents exited: " + ", ".join(f"{a.name}={a.process.poll()}" for a in agents))
            final = read()
        finally:
            for agent in agents:
                if agent.process.poll() is None:
                    agent.process.kill()
                    agent.process.wait(5)
            session.close()

        # -- summary --------------------------------------------------------------------------
        summaries: dict[str, dict[str, Any]] = {}
        for agent in agents:
            if agent is not victim and os.path.exists(agent.summary_path):
                with open(agent.summary_path, encoding="utf-8") as handle:
                    summaries[agent.name] = json.load(handle)
        rounds: dict[int, dict[str, Any]] = {}
        for name, summary in summaries.items():
            for rec in summary["rounds"]:
                entry = rounds.setdefault(
                    rec["round"], {"world_size": rec["world_size"], "ranks": {}, "rdzv": [], "outcomes": set()}
                )
                entry["ranks"][name] = rec["rank"]
                entry["rdzv"].append(rec["rendezvous_seconds"])
                entry["outcomes"].add(rec["outcome"])
        if full is not None and full.round in rounds:
            rounds[full.round]["ranks"][victim.name] = 1
        print()
        print(f"Summary of run {run_id} ({AGENTS} agents, --nnodes {NNODES}, {STEPS} steps of {STEP_TIME} s):")
        print(f"  {'round':>5}  {'world':>5}  {'ranks':<40} {'time to rendezvous':>19}  outcome")
        for number in sorted(rounds):
            entry = rounds[number]
            ranks = ", ".join(f"{k}={v}" for k, v in sorted(entry["ranks"].items()))
            print(
                f"  {number:>5}  {entry['world_size']:>5}  {ranks:<40} {max(entry['rdzv']):>17.2f} s  {'/'.join(sorted(entry['outcomes']))}"
            )
        if reformed is not None:
            print(
                f"  killed {victim.name} at t={t_kill:.2f} s; survivors re-formed in {t_reformed - t_kill:.2f} s (dead-node detection + last call)"
            )
        print(f"  total wall time {demo.now():.2f} s")
        print()
        print("Checks:")
        survivors = [a for a in agents if a is not victim]
        demo.check(
            all(a.process.returncode == 0 for a in survivors),
            "the surviving agents exited 0: " + ", ".join(f"{a.name}={a.process.returncode}" for a in survivors),
        )
        demo.check(
            victim.process.returncode == -signal.SIGKILL,
            f"{victim.name} was killed (returncode {victim.process.returncode})",
        )
        last = [s["rounds"][-1] for s in summaries.values() if s["rounds"]]
        demo.check(
            len(last) == len(survivors)
            and all(r["world_size"] == AGENTS - 1 and r["outcome"] == "succeeded" for r in last),
            f"the last round had {AGENTS - 1} nodes and succeeded on each",
        )
        demo.check(sorted(r["rank"] for r in last) == list(range(AGENTS - 1)), "ranks of the last round are 0..N-1")
        checkpoint = os.path.join(tmp, "checkpoint.json")
        done = json.load(open(checkpoint))["next_step"] if os.path.exists(checkpoint) else 0
        demo.check(done == STEPS, f"all {STEPS} steps ran (checkpoint says {done})")
        demo.check(final.closed, "the rendezvous is closed")
        time.sleep(0.2)
        demo.check(
            bool(victim_workers) and not any(_pid_alive(p) for p in victim_workers),
            f"the killed agent's worker is gone (pids {sorted(victim_workers)})",
        )
        demo.check(demo.now() < 60, f"finished in under a minute ({demo.now():.1f} s)")
        if demo.failures:
            print("\nThe demo FAILED. Last lines of each agent's log:", file=sys.stderr)
            for agent in agents:
                print(
                    f"--- {agent.name} (exit {agent.process.returncode}) ---\n{_tail(agent.log_path)}", file=sys.stderr
                )
            return 1
    print("\nThe demo passed.")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="rdzv's local demo: an elastic job that loses a node (kill -9) and re-forms."
    )
    parser.add_argument("--verbose", "-v", action="store_true", help="stream the agents' and workers' output")
    args = parser.parse_args(argv)
    try:
        return run_demo(args.verbose)
    except Exception as exc:
        print(f"demo: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
