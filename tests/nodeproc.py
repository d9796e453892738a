"""Rendezvous nodes for churn tests: in this process (:func:`create_node`) or in a child
process (:class:`NodeProcess`) that a test kills with SIGKILL to simulate nodes dying
without leaving (their keep-alives stop; nobody says goodbye).

Every node gets its own backend and store, as a node on its own host would: on Redis a
client of its own (``create_backend(..., shared=False)`` when the backend offers it; until
then a distinct pool size, which is part of the key under which the process shares clients),
on etcd its own connection pool (``create_backend`` never shares one).

The child process (``python -m tests.nodeproc SPEC``) creates ``count`` nodes, prints
``{"ready": count}``, calls ``next_rendezvous()`` on each at once and prints
``{"node": i, "rank": r, "world_size": w}`` (or ``{"node": i, "error": "..."}``) for each;
then it keeps their keep-alives going until it is killed or its stdin closes.
"""

from __future__ import annotations

import inspect
import itertools
import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from rdzv_core.api import RendezvousParameters

ROOT = Path(__file__).resolve().parents[1]
#: Distinct per node of this process (the Redis fallback for a client of its own).
_node_numbers = itertools.count()


def _with_config(params: RendezvousParameters, **config: Any) -> RendezvousParameters:
    merged = {**params.config, **config}
    return RendezvousParameters(
        params.backend, params.endpoint, params.run_id, params.min_nodes, params.max_nodes, params.local_addr, **merged
    )


def _own_backend(params: RendezvousParameters) -> tuple[Any, Any]:
    """``(backend, store)`` of ``params`` on connections no other node of this process uses."""
    if params.backend == "redis":
        from rdzv_redis.backend import create_backend

        if "shared" in inspect.signature(create_backend).parameters:
            return create_backend(params, shared=False)
        # Clients are shared per configuration: a pool size of its own gives this node its own.
        base = int(params.config.get("max_connections", 64))
        return create_backend(_with_config(params, max_connections=base + next(_node_numbers)))
    if params.backend.startswith("etcd"):
        from rdzv_etcd.backend import create_backend as create_etcd_backend

        return create_etcd_backend(params)
    raise ValueError(f"no churn node for backend {params.backend!r}")


@dataclass
class Node:
    """One simulated node: a handler on a backend and store of its own."""

    handler: Any
    backend: Any
    store: Any

    def close(self) -> None:
        """``shutdown()`` (stops the keep-alives, closes the run), then release the
        connections. Never raises: this is teardown."""
        try:
            self.handler.shutdown()
        except Exception:
            pass
        for thing in (self.store, self.backend):
            try:
                thing.close()
            except Exception:
                pass


def create_node(params: RendezvousParameters) -> Node:
    """A node of ``params`` in this process (``rdzv_core.dynamic.create_handler``)."""
    from rdzv_core.dynamic import create_handler

    backend, store = _own_backend(params)
    try:
        return Node(create_handler(store, backend, params), backend, store)
    except BaseException:
        store.close()
        backend.close()
        raise


# -- nodes in a child process ------------------------------------------------------------------


class NodeProcess:
    """``count`` nodes of ``params`` in a child process (see the module docstring)."""

    def __init__(self, params: RendezvousParameters, count: int) -> None:
        spec = {
            "backend": params.backend,
            "endpoint": params.endpoint,
            "run_id": params.run_id,
            "min_nodes": params.min_nodes,
            "max_nodes": params.max_nodes,
            "local_addr": params.local_addr,
            "config": dict(params.config),
            "count": count,
        }
        self.count = count
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(p for p in [str(ROOT), os.environ.get("PYTHONPATH", "")] if p),
        }
        self._stderr = tempfile.TemporaryFile()  # a file, not a pipe: keep-alive warnings never block the child
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.nodeproc", json.dumps(spec)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, text=True, cwd=ROOT, env=env,
        )  # fmt: skip
        self._lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put("")  # EOF

    def stderr_tail(self, limit: int = 3000) -> str:
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")[-limit:]

    def message(self, timeout: float) -> dict[str, Any]:
        """The child's next JSON line within ``timeout`` s (AssertionError otherwise)."""
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(
                f"node process {self.proc.pid} printed nothing within {timeout} s; stderr:\n{self.stderr_tail()}"
            ) from None
        if not line:
            raise AssertionError(
                f"node process {self.proc.pid} exited ({self.proc.wait(10)}); stderr:\n{self.stderr_tail()}"
            )
        return dict(json.loads(line))

    def wait_ready(self, timeout: float) -> None:
        """Until the child's nodes exist and are about to call ``next_rendezvous()``."""
        assert self.message(timeout) == {"ready": self.count}

    def infos(self, timeout: float) -> list[SimpleNamespace]:
        """The ``rank``/``world_size`` of each of the child's nodes, in node order (their first
        ``next_rendezvous()``); AssertionError naming the error when one failed."""
        got: dict[int, SimpleNamespace] = {}
        while len(got) < self.count:
            reply = self.message(timeout)
            assert "error" not in reply, f"a node of process {self.proc.pid} failed: {reply['error']}"
            got[reply["node"]] = SimpleNamespace(rank=reply["rank"], world_size=reply["world_size"])
        return [got[i] for i in range(self.count)]

    def kill(self) -> None:
        """SIGKILL: the nodes die at once, without leaving."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def close(self) -> None:
        self.kill()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass
        self._stderr.close()


def _main(argv: list[str]) -> None:
    spec = json.loads(argv[1])
    params = RendezvousParameters(
        spec["backend"],
        spec["endpoint"],
        spec["run_id"],
        spec["min_nodes"],
        spec["max_nodes"],
        spec["local_addr"],
        **spec["config"],
    )
    nodes = [create_node(params) for _ in range(spec["count"])]
    lock = threading.Lock()

    def emit(message: dict[str, Any]) -> None:
        with lock:
            print(json.dumps(message), flush=True)

    def join(index: int, node: Node) -> None:
        try:
            info = node.handler.next_rendezvous()
        except Exception as exc:
            emit({"node": index, "error": f"{type(exc).__name__}: {exc}"})
            return
        emit({"node": index, "rank": info.rank, "world_size": info.world_size})

    emit({"ready": len(nodes)})
    for index, node in enumerate(nodes):
        threading.Thread(target=join, args=(index, node), daemon=True).start()
    sys.stdin.read()  # keep-alives run until SIGKILL, or until the parent goes away
    os._exit(0)


if __name__ == "__main__":
    _main(sys.argv)
