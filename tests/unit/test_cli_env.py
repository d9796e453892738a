"""torchrun's PET_* variables configure ``rdzv run``/``status`` (an option on the command line
wins, then RDZV_*, then PET_*), and ``rdzv completion`` prints a working completion script."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from rdzv_core.cli import cli

pytestmark = pytest.mark.unit


def _invoke(args: list[str], env: dict[str, str]) -> tuple[int, str]:
    clean = {k: None for k in os.environ if k.startswith(("RDZV_", "PET_"))}
    result = CliRunner().invoke(cli, args, env={**clean, **env})
    return result.exit_code, result.output


def test_pet_rdzv_backend_is_read_and_rdzv_backend_wins() -> None:
    code, out = _invoke(["status", "--run-id", "x"], {"PET_RDZV_BACKEND": "no-such-backend"})
    assert code != 0 and "no-such-backend" in out
    code, out = _invoke(
        ["status", "--run-id", "x"], {"PET_RDZV_BACKEND": "no-such-backend", "RDZV_BACKEND": "other-one"}
    )
    assert "other-one" in out and "no-such-backend" not in out


def test_pet_rdzv_id_and_conf_are_read() -> None:
    code, out = _invoke(
        ["status", "--backend", "redis"], {"PET_RDZV_ID": "job-from-pet", "PET_RDZV_CONF": "join_timeout=-1"}
    )
    assert code == 2 and "join_timeout" in out and "-1" in out  # the conf was read (and refused)


def test_pet_nnodes_is_read_by_run() -> None:
    code, out = _invoke(["run", "--standalone", "--", "true"], {"PET_NNODES": "3:2"})
    assert code == 2 and "3:2" in out


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_prints_a_script(shell: str) -> None:
    code, out = _invoke(["completion", shell], {})
    assert code == 0 and "_RDZV_COMPLETE" in out


def test_completion_completes_commands_and_backends() -> None:
    env = {
        **os.environ,
        "_RDZV_COMPLETE": "bash_complete",
        "COMP_WORDS": "rdzv status --backend etcd-",
        "COMP_CWORD": "3",
    }
    done = subprocess.run([sys.executable, "-m", "rdzv_core.cli"], env=env, capture_output=True, text=True, timeout=30)
    offered = set(done.stdout.split())
    assert {"plain,etcd-v2", "plain,etcd-v3"} <= offered and all(o.startswith("plain,etcd-") for o in offered)
    env.update(COMP_WORDS="rdzv res", COMP_CWORD="1")
    done = subprocess.run([sys.executable, "-m", "rdzv_core.cli"], env=env, capture_output=True, text=True, timeout=30)
    assert done.stdout.split() == ["plain,reset"]
