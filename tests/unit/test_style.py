"""The tree stays linted and formatted (ruff check, ruff format --check), as tox -e lint and
the pre-commit hooks ask; skipped where ruff is not installed (it comes with rdzv[lint])."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(shutil.which("ruff") is None, reason="ruff is not installed (pip install 'rdzv[lint]')")
@pytest.mark.parametrize(
    "command", [["ruff", "check", "."], ["ruff", "format", "--check", "."]], ids=["check", "format"]
)
def test_ruff(command):
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
