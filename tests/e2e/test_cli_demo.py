"""The README's first command: ``python examples/demo.py`` passes unattended in under a minute."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rdzv_redis.server import find_redis_server

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(find_redis_server() is None, reason="the demo needs a redis-server binary")
def test_demo_passes_in_under_a_minute() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RDZV_")}
    t0 = time.monotonic()
    result = subprocess.run(
        [sys.executable, str(REPO / "examples" / "demo.py")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )
    elapsed = time.monotonic() - t0
    assert result.returncode == 0, result.stdout + result.stderr
    assert "The demo passed." in result.stdout
    assert "kill -9" in result.stdout and "re-formed" in result.stdout
    assert "[FAIL]" not in result.stdout
    assert elapsed < 60
