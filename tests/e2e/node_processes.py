"""Helpers for tests that run rendezvous nodes as real processes printing JSON lines."""

from __future__ import annotations

import json
import queue
import subprocess
import threading
from typing import Any

import pytest

#: Seconds a node process may take to print its next line.
BOUND = 60


def read_line(proc: subprocess.Popen[str], timeout: float = BOUND) -> Any:
    """The next stdout line of ``proc`` as JSON, waiting at most ``timeout`` seconds (the test
    fails, showing the node's stderr, when it prints nothing or exits)."""
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: lines.put(proc.stdout.readline()), daemon=True).start()  # type: ignore[union-attr]
    try:
        line = lines.get(timeout=timeout)
    except queue.Empty:
        pytest.fail(f"node {proc.pid} printed nothing within {timeout} s")
    if not line:
        pytest.fail(f"node {proc.pid} exited: {proc.wait(5)}; stderr:\n{proc.stderr.read()[-3000:]}")  # type: ignore[union-attr]
    return json.loads(line)


def stop_processes(started: list[subprocess.Popen[str]]) -> None:
    """Kill what still runs of ``started`` and close their pipes."""
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
