"""Servers and node fleets on a :class:`~tests.netlab.lab.Lab`, and the invariants checked
from the nodes' own records (see :mod:`tests.netlab.node`)."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tests.netlab.invariants import JOIN_TIMEOUT_S, check_records, group_rounds
from tests.netlab.lab import ROOT, Lab

#: Keep-alives every 0.5 s, dead after 5 missed (2.5 s); short last call and join timeout.
INTERVAL_S = 0.5
ATTEMPTS = 5
DEAD_AFTER_S = INTERVAL_S * ATTEMPTS
HANDLER_CONFIG = {
    "keep_alive_interval": INTERVAL_S,
    "keep_alive_max_attempt": ATTEMPTS,
    "heartbeat_timeout": 1.0,
    "last_call_timeout": 0.5,
    "join_timeout": JOIN_TIMEOUT_S,
    "close_timeout": 5.0,
}
BACKEND_CONFIG = {
    "redis": {"socket_timeout": 1.0, "connect_timeout": 1.0, "retry_timeout": 3.0},
    "etcd-v3": {"read_timeout": 2.0},
}
#: Frames per second (each direction) an idle node's link may carry in a settled round, with
#: keep-alives every 0.5 s and ``num_nodes_waiting()`` every 0.1 s. Measured on this lab:
#: redis 4 up / 2 down (keep-alives; the poll is answered from pub/sub), etcd-v3 40 / 27 (the
#: poll reads the round's summary key). A watch or reconnect loop exceeds these many times over.
IDLE_FRAMES_PER_S = {"redis": 15.0, "etcd-v3": 100.0}


class LabServer:
    """The backend's server on the lab's ``srv`` host (``redis-server`` or ``etcd``), started
    through rdzv's own launchers inside the host's namespace."""

    def __init__(self, lab: Lab, backend: str) -> None:
        self.lab, self.backend = lab, backend
        address = lab.address("srv")
        self._dir = tempfile.mkdtemp(prefix="rdzv-netlab-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
        if backend == "redis":
            from rdzv_redis.server import RedisServer

            self.server: Any = type("LabRedisServer", (RedisServer,), {"host": address})(
                port=6379,
                extra_args=["--protected-mode", "no"],  # on a lab address, no password: a private network
            )
        else:
            from rdzv_etcd.server import EtcdServer

            self.server = EtcdServer(host=address, data_dir=os.path.join(self._dir, "data"))
        lab.call("srv", self.server.start)

    @property
    def endpoint(self) -> str:
        return f"{self.lab.address('srv')}:{self.server.port}"

    def restart_empty(self) -> None:
        """Kill the server (SIGKILL) and start it again on the same address, without its data."""
        if self.backend == "redis":
            self.server.kill()
            self.lab.call("srv", self.server.start)
        else:
            self.lab.call("srv", lambda: self.server.restart(keep_data=False, kill=True))

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.server.stop()
        shutil.rmtree(self._dir, ignore_errors=True)


@dataclass
class NodeHandle:
    host: str
    proc: subprocess.Popen[str]
    stderr: Any
    key: str = ""


class Fleet:
    """Node processes, one per node host of the lab, and the records they print.

    ``server`` is a :class:`LabServer` (or anything with ``backend`` and ``endpoint``);
    ``config`` the nodes' configuration (default: :data:`HANDLER_CONFIG` and the backend's).

    Attributes:
        records: Every record so far, each with ``host`` added, in arrival order.
    """

    def __init__(
        self,
        lab: Lab,
        server: Any,
        hosts: list[str],
        min_nodes: int,
        max_nodes: int,
        config: dict[str, Any] | None = None,
    ) -> None:
        self.lab, self.server = lab, server
        self.config = config if config is not None else {**HANDLER_CONFIG, **BACKEND_CONFIG[server.backend]}
        self.run_id = f"lab-{uuid.uuid4().hex[:10]}"
        self.min_nodes, self.max_nodes = min_nodes, max_nodes
        self.records: list[dict[str, Any]] = []
        self.nodes: dict[str, NodeHandle] = {}
        self._cond = threading.Condition()
        for host in hosts:
            self.start(host)

    def _spec(self, host: str) -> str:
        config = self.config
        return json.dumps(
            {
                "backend": self.server.backend, "endpoint": self.server.endpoint, "run_id": self.run_id,
                "min_nodes": self.min_nodes, "max_nodes": self.max_nodes, "local_addr": self.lab.address(host),
                "config": config,
            }
        )  # fmt: skip

    def start(self, host: str, go: bool = False) -> None:
        """Start the node of ``host``; it joins once :meth:`go` is called (at once if ``go``)."""
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(p for p in [str(ROOT), os.environ.get("PYTHONPATH", "")] if p),
        }
        stderr = tempfile.TemporaryFile()
        proc = self.lab.popen(
            host, [sys.executable, "-m", "tests.netlab.node", self._spec(host)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, cwd=ROOT, env=env,
        )  # fmt: skip
        handle = self.nodes[host] = NodeHandle(host, proc, stderr)
        ready: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, args=(handle, ready), daemon=True).start()
        try:
            handle.key = ready.get(timeout=60)
        except queue.Empty:
            raise AssertionError(f"the node of {host} was not ready within 60 s: {self.stderr(host)}") from None
        if go:
            self.go([host])

    def _read(self, handle: NodeHandle, ready: queue.Queue[str]) -> None:
        assert handle.proc.stdout is not None
        for line in handle.proc.stdout:
            record = json.loads(line)
            if record["ev"] == "ready":
                ready.put(record["node"])
                continue
            record["host"] = handle.host
            with self._cond:
                self.records.append(record)
                self._cond.notify_all()
        ready.put("")

    def stderr(self, host: str) -> str:
        handle = self.nodes[host]
        handle.stderr.seek(0)
        return handle.stderr.read().decode(errors="replace")[-3000:]

    def go(self, hosts: list[str] | None = None) -> None:
        for host in hosts or list(self.nodes):
            stdin = self.nodes[host].proc.stdin
            assert stdin is not None
            stdin.write("go\n")
            stdin.flush()

    def signal(self, host: str, signum: int) -> None:
        os.kill(self.nodes[host].proc.pid, signum)

    def wait_for(self, what: str, predicate: Callable[[list[dict[str, Any]]], bool], timeout: float) -> float:
        """Wait until ``predicate(records)``; the monotonic time it became true. AssertionError
        naming ``what`` (with the records) after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self.records):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{what}: not within {timeout} s; records:\n{self.dump()}")
                self._cond.wait(min(left, 0.2))
        return time.monotonic()

    def rounds(self) -> dict[str, list[dict[str, Any]]]:
        """The formed rounds: round id -> the ``round`` records of its members."""
        with self._cond:
            return group_rounds(self.records)

    def wait_round(self, members: set[str], timeout: float = 30.0, after: float = 0.0) -> str:
        """Wait until a round started after ``after`` (monotonic) holds exactly ``members``
        (hosts), all of which reported it; its id."""
        found: list[str] = []

        def formed(records: list[dict[str, Any]]) -> bool:
            for round_id, got in self.rounds().items():
                hosts = {r["host"] for r in got}
                if hosts == members and got[0]["world_size"] == len(members) and min(r["t1"] for r in got) > after:
                    found.append(round_id)
                    return True
            return False

        self.wait_for(f"a round of {sorted(members)}", formed, timeout)
        return found[0]

    def last_rounds(self) -> dict[str, dict[str, Any]]:
        """Each host's last ``round`` record."""
        with self._cond:
            return {r["host"]: r for r in self.records if r["ev"] == "round"}

    def wait_settled(self, members: set[str], timeout: float = 30.0) -> str:
        """Wait until every host of ``members`` holds one round of exactly them and has since
        answered ``num_nodes_waiting() == 0``; the round's id."""
        found: list[str] = []

        def settled(records: list[dict[str, Any]]) -> bool:
            last = self.last_rounds()
            held = {last[h]["round"] for h in members if h in last}
            if len(held) != 1 or set(last) < members or last[next(iter(members))]["world_size"] != len(members):
                return False
            for host in members:
                after = [
                    r for r in records if r["host"] == host and r["ev"] == "waiting" and r["t0"] > last[host]["t1"]
                ]
                if not after or after[-1]["n"] != 0:
                    return False
            found.append(held.pop())
            return True

        self.wait_for(f"all of {sorted(members)} in one round", settled, timeout)
        return found[0]

    def settle(self, seconds: float) -> None:
        """Let the nodes run ``seconds`` more (a bounded wait for nothing to happen)."""
        with self._cond:
            deadline = time.monotonic() + seconds
            while (left := deadline - time.monotonic()) > 0:
                self._cond.wait(left)

    def check_idle_traffic(self, seconds: float = 1.5) -> None:
        """Over ``seconds``, no node's link carries more than :data:`IDLE_FRAMES_PER_S` frames
        per second either way (call once the round settled and the faults healed)."""
        hosts = sorted(self.nodes)
        before = {host: self.lab.links[host].stats() for host in hosts}
        start = time.monotonic()
        self.settle(seconds)
        after = {host: self.lab.links[host].stats() for host in hosts}
        took = time.monotonic() - start
        bound = IDLE_FRAMES_PER_S[self.server.backend]
        for host in hosts:
            for way in ("up", "down"):
                rate = (after[host][way]["frames"] - before[host][way]["frames"]) / took
                assert rate <= bound, f"{host}: {rate:.0f} frames/s {way} while idle (bound {bound})\n{self.dump()}"

    def dump(self, limit: int = 120) -> str:
        lines = [json.dumps(r, sort_keys=True) for r in self.records if r["ev"] != "waiting" or r["n"]]
        return "\n".join(lines[-limit:])

    def close(self) -> None:
        for handle in self.nodes.values():
            with contextlib.suppress(ProcessLookupError):
                handle.proc.send_signal(signal.SIGCONT)
            if handle.proc.poll() is None:
                handle.proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                handle.proc.wait(10)
            for stream in (handle.proc.stdin, handle.proc.stdout):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()
            handle.stderr.close()

    def check_invariants(self, allowed_errors: set[str] | None = None) -> None:
        """:func:`tests.netlab.invariants.check_records` on the records so far."""
        with self._cond:
            records = list(self.records)
        check_records(records, self.max_nodes, allowed_errors, dump=self.dump())
