"""The wheel as a user gets it: built from this tree, installed with ``[redis]`` only into a
fresh virtual environment (its dependencies come from the package index), then the README's
library snippet against a real Redis and ``rdzv run --standalone`` from it."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import venv
import zipfile
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
BOUND = 600  # seconds: pip fetches msgspec, click, tenacity, redis and hiredis

SNIPPET = """
import sys
from rdzv_core import RendezvousParameters, get_rendezvous_handler

params = RendezvousParameters(backend="redis", endpoint=sys.argv[1], run_id="wheel-job", min_nodes=1, max_nodes=1, last_call_timeout=0.1)
handler = get_rendezvous_handler(params)
info = handler.next_rendezvous()
info.store.set("hello", b"world")
assert (info.rank, info.world_size, info.store.get("hello")) == (0, 1, b"world")
handler.shutdown()
print("snippet ok", info.bootstrap_store_info.master_addr)
"""


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the wheel of this tree and its ``[redis]`` extra; returns its bin/."""
    root = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(root / "dist"), str(REPO)],
        check=True,
        timeout=BOUND,
    )
    (wheel,) = (root / "dist").glob("rdzv-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert any(name.endswith("licenses/LICENSE") for name in names) and "rdzv_redis/scripts/round.lua" in names
    assert not any(name.startswith("tests/") for name in names)
    venv.EnvBuilder(with_pip=True, clear=True).create(root / "venv")
    bin_dir = root / "venv" / "bin"
    subprocess.run(
        [str(bin_dir / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check", f"{wheel}[redis]"],
        check=True,
        timeout=BOUND,
    )
    return bin_dir


def test_the_readme_snippet_runs_from_the_wheel(installed: Path, redis_server: Any, tmp_path: Path) -> None:
    script = tmp_path / "snippet.py"
    script.write_text(textwrap.dedent(SNIPPET))
    result = subprocess.run(
        [str(installed / "python"), str(script), redis_server.endpoint],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "snippet ok" in result.stdout


def test_rdzv_run_standalone_from_the_wheel(installed: Path, tmp_path: Path) -> None:
    command = [
        str(installed / "rdzv"),
        "run",
        "--standalone",
        "--",
        str(installed / "python"),
        "-c",
        "import os; print('rank', os.environ['RANK'])",
    ]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "rank 0" in result.stdout


def test_the_wheel_has_no_etcd_v2_client_with_the_etcd_extra_alone() -> None:
    from importlib.metadata import metadata

    requires = [line for line in metadata("rdzv").get_all("Requires-Dist") or [] if "python-etcd" in line]
    assert requires and all("etcd-v2" in line for line in requires), requires
