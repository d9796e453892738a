"""A backend plug-in from outside this repository, registered only through entry-point metadata.

The plug-in ``rdzv_testplug`` is written into a temporary directory with a ``.dist-info``
that declares ``rdzv.backends: testplug = rdzv_testplug.plugin:PLUGIN`` and
``torchrun.handlers: testplug = rdzv_testplug.plugin:PLUGIN.torch_handler_creator``. Its
backend keeps torch's whole-state blob in a c10d store (:class:`StoreRendezvousBackend`, as
torch's ``c10d`` backend does), here the run's Redis store. With no change to rdzv's core it
serves the registry, ``rdzv status`` and ``torchrun --rdzv-backend=testplug``; and
``rdzv_core`` itself imports no plug-in package.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from rdzv_core.api import RendezvousParameters
from rdzv_core.registry import RendezvousHandlerRegistry

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = Path(__file__).parent / "torch_scripts"
BOUND = 120  # seconds: one torchrun job of two agents (importing torch dominates)

PLUGIN_SOURCE = '''
"""An out-of-tree rdzv plug-in (test): torch's state blob in the run's Redis store."""

from rdzv_core.plugin import BackendPlugin
from rdzv_core.store_backend import StoreRendezvousBackend


def create_backend(params):
    from rdzv_redis.backend import create_backend as redis_parts

    redis_backend, store = redis_parts(params)
    redis_backend.close()  # only the store is used; it holds its own reference to the client
    return StoreRendezvousBackend(store, params.run_id, name="testplug"), store


PLUGIN = BackendPlugin("testplug", create_backend, frozenset({"password"}), extra="rdzv-testplug")
'''


@pytest.fixture
def plugin_dir(tmp_path: Path) -> Path:
    root = tmp_path / "site"
    (root / "rdzv_testplug").mkdir(parents=True)
    (root / "rdzv_testplug" / "__init__.py").write_text("")
    (root / "rdzv_testplug" / "plugin.py").write_text(textwrap.dedent(PLUGIN_SOURCE))
    info = root / "rdzv_testplug-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: rdzv-testplug\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[rdzv.backends]\ntestplug = rdzv_testplug.plugin:PLUGIN\n\n[torchrun.handlers]\ntestplug = rdzv_testplug.plugin:PLUGIN.torch_handler_creator\n"
    )
    return root


def _env(plugin_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RDZV_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(plugin_dir), str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    env["OMP_NUM_THREADS"] = "1"
    return env


def test_core_imports_no_plugin_package():
    """By import graph: no module of rdzv_core imports rdzv_redis or rdzv_etcd."""
    offenders = []
    for path in sorted((REPO / "rdzv_core").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = (
                [alias.name for alias in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            offenders += [
                f"{path.relative_to(REPO)}:{node.lineno} {name}"
                for name in names
                if name.split(".")[0] in ("rdzv_redis", "rdzv_etcd")
            ]
    assert offenders == []


def test_the_registry_finds_it_through_entry_point_metadata(plugin_dir, monkeypatch, redis_server):
    monkeypatch.syspath_prepend(str(plugin_dir))
    registry = RendezvousHandlerRegistry()
    plugin = registry.plugin("testplug")
    assert plugin is not None and plugin.install_hint == "Install it with: pip install 'rdzv-testplug'"
    assert {"memory", "redis", "etcd-v2", "etcd-v3", "testplug"} <= set(registry.backends())
    handler = registry.create_handler(
        RendezvousParameters(
            "testplug", redis_server.endpoint, f"plug-{uuid.uuid4().hex[:8]}", 1, 1, last_call_timeout=0.1
        )
    )
    try:
        info = handler.next_rendezvous()
        assert (info.rank, info.world_size, handler.get_backend()) == (0, 1, "testplug")
    finally:
        handler.shutdown()


@pytest.mark.skipif(
    not __import__("importlib").util.find_spec("torch"), reason="torch is not installed (pip install 'rdzv[torch]')"
)
def test_torchrun_and_rdzv_status_use_it_with_no_core_change(plugin_dir, redis_server, tmp_path):
    run_id, out = f"plug-{uuid.uuid4().hex[:8]}", tmp_path / "out"
    out.mkdir()
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1", "--rdzv-backend=testplug",
        f"--rdzv-endpoint={redis_server.endpoint}", f"--rdzv-id={run_id}", "--rdzv-conf=join_timeout=60,last_call_timeout=1,keep_alive_interval=1",
        "--monitor-interval=0.2", "--local-addr=127.0.0.1", str(SCRIPTS / "allreduce.py"),
    ]  # fmt: skip
    env = {**_env(plugin_dir), "RDZV_E2E_OUT": str(out)}
    logs = [tmp_path / f"agent-{name}.log" for name in "ab"]
    agents = []
    for name, log in zip("ab", logs, strict=True):
        with open(log, "wb") as sink:
            agents.append(
                subprocess.Popen(
                    command, stdout=sink, stderr=subprocess.STDOUT, env={**env, "RDZV_E2E_NODE": name}, cwd=tmp_path
                )
            )
    try:
        codes = [agent.wait(BOUND) for agent in agents]
    finally:
        for agent in agents:
            agent.kill()
    assert codes == [0, 0], "\n".join(log.read_text()[-3000:] for log in logs)
    records = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["rank"] for r in records] == [0, 1] and {r["world_size"] for r in records} == {2}

    status = subprocess.run(
        [sys.executable, "-m", "rdzv_core.cli", "status", "--backend", "testplug", "--endpoint", redis_server.endpoint, "--run-id", run_id, "--json"],
        env=_env(plugin_dir), cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert status.returncode == 0, status.stderr
    document = json.loads(status.stdout)
    assert (document["backend"], document["exists"], document["closed"]) == ("testplug", True, True)
