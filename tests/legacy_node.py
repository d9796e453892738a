"""A legacy etcd rendezvous node in a process of its own: torch's ``EtcdRendezvousHandler``
or rdzv's (``etcd`` / ``etcd-legacy-v3``), for the interop and kill -9 tests.

``python -m tests.legacy_node SPEC`` (SPEC: JSON ``{"impl": "torch"|<rdzv backend>,
"endpoint", "run_id", "min", "max", "name", "config": {...}, "rounds": n, "bound": s}``)
creates the handler, prints ``{"ready": name}``, then for each of ``rounds`` rounds:
``next_rendezvous()``, writes ``id/<rank>`` = ``name`` into the round's store, reads every
rank's (so each node prints the whole rank -> name map of the round, through the store that
torch's and rdzv's nodes share) and prints ``{"name", "rank", "world_size", "members"}``;
then polls ``num_nodes_waiting()`` (as an agent does) until it is > 0 and starts the next
round. Errors print ``{"name", "error"}``. Every wait is bounded by ``bound`` seconds.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _torch_handler(spec: dict[str, Any]) -> Any:
    from torch.distributed.elastic.rendezvous import RendezvousParameters
    from torch.distributed.elastic.rendezvous.etcd_rendezvous import create_rdzv_handler

    params = RendezvousParameters("etcd", spec["endpoint"], spec["run_id"], spec["min"], spec["max"], **spec["config"])
    return create_rdzv_handler(params)


def _rdzv_handler(spec: dict[str, Any]) -> Any:
    from rdzv_core.api import RendezvousParameters
    from rdzv_core.registry import get_rendezvous_handler

    params = RendezvousParameters(
        spec["impl"], spec["endpoint"], spec["run_id"], spec["min"], spec["max"], **spec["config"]
    )
    return get_rendezvous_handler(params)


class LegacyNodeProcess:
    """``python -m tests.legacy_node SPEC`` as a child process; its JSON lines are queued."""

    def __init__(self, **spec: Any) -> None:
        self.name = str(spec["name"])
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p),
        }
        self._stderr = tempfile.TemporaryFile(mode="w+")  # torch logs a lot: a pipe could fill up
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.legacy_node", json.dumps(spec)],
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            cwd=str(ROOT),
            env=env,
            text=True,
        )
        self.lines: queue.Queue[dict[str, Any]] = queue.Queue()
        self.seen: list[dict[str, Any]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                self.lines.put(json.loads(line))
            except ValueError:
                pass

    def next_event(self, bound: float) -> dict[str, Any]:
        """The next JSON line within ``bound`` seconds (``AssertionError`` otherwise, with stderr)."""
        try:
            event = self.lines.get(timeout=bound)
        except queue.Empty:
            raise AssertionError(
                f"node {self.name}: no output within {bound} s; stderr:\n{self.stderr_tail()}"
            ) from None
        self.seen.append(event)
        if "error" in event:
            raise AssertionError(f"node {self.name} failed: {event['error']}\n{self.stderr_tail()}")
        return event

    def stderr_tail(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read()[-3000:]

    def kill(self) -> None:
        """SIGKILL, as a machine that dies (no goodbye, keep-alives stop)."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def close(self) -> None:
        """Kill it if it runs, and drop its captured stderr."""
        self.kill()
        self._stderr.close()


def _emit(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


def main(spec: dict[str, Any]) -> None:
    name, bound = spec["name"], float(spec.get("bound", 60))
    handler = _torch_handler(spec) if spec["impl"] == "torch" else _rdzv_handler(spec)
    _emit(ready=name)
    for _ in range(int(spec.get("rounds", 1))):
        info = handler.next_rendezvous()
        store, rank, size = info.store, info.rank, info.world_size
        store.set(f"id/{rank}", name.encode())
        members = [store.get(f"id/{r}").decode() for r in range(size)]
        _emit(name=name, rank=rank, world_size=size, members=members)
        deadline = time.monotonic() + bound
        while handler.num_nodes_waiting() == 0:
            if time.monotonic() > deadline:
                _emit(name=name, error="no node came to wait")
                return
            time.sleep(0.2)
    time.sleep(bound)  # keep the keep-alives going until the test kills this process


if __name__ == "__main__":
    spec = json.loads(sys.argv[1])
    try:
        main(spec)
    except Exception as exc:
        _emit(name=spec.get("name"), error=f"{type(exc).__name__}: {exc}")
        raise
