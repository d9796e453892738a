"""The ``rdzv`` command's argument handling, help and error lines (click's CliRunner, no server)."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator

import pytest
from click.testing import CliRunner

from rdzv_core.cli import cli, parse_nnodes
from rdzv_core.status import safe_endpoint

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """The CLI configures the root logger (level, a stderr handler): undo it after each test."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)


def invoke(*args: str, env: dict[str, str] | None = None):
    runner = CliRunner()
    clean = {k: None for k in ("RDZV_BACKEND", "RDZV_ENDPOINT", "RDZV_RUN_ID", "RDZV_CONF", "RDZV_LOG_LEVEL")}
    return runner.invoke(cli, list(args), env={**clean, **(env or {})}, catch_exceptions=False)


def error_lines(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.strip()]


@pytest.mark.parametrize("command", [[], ["run"], ["status"], ["close"], ["server"]])
def test_every_command_has_help_with_examples(command: list[str]) -> None:
    result = invoke(*command, "--help")
    assert result.exit_code == 0
    assert "Usage: rdzv" in result.output
    assert "Example" in result.output or "rdzv run --standalone" in result.output


def test_no_command_prints_the_help() -> None:
    result = invoke()
    assert result.exit_code != 0
    assert "Usage: rdzv" in result.output and "Commands:" in result.output and ": error:" not in result.output


def test_run_help_documents_exit_codes() -> None:
    out = invoke("run", "--help").output
    assert "Exit codes" in out and "rendezvous failure" in out and "128+N" in out


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1", (1, 1)), ("3", (3, 3)), ("2:3", (2, 3)), (" 2 : 4 ", (2, 4)), ("5:5", (5, 5))],
)
def test_parse_nnodes(text: str, expected: tuple[int, int]) -> None:
    assert parse_nnodes(text) == expected


@pytest.mark.parametrize("text", ["3:2", "0", "0:2", "a", "1:2:3", "", "-1:2", "1.5"])
def test_parse_nnodes_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_nnodes(text)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["run", "--run-id", "x", "--nnodes", "3:2", "--", "true"], "MIN (3) must be <= MAX (2)"),
        (["run", "--run-id", "x", "--nnodes", "zero", "--", "true"], "--nnodes"),
        (["run", "--run-id", "x", "--rdzv-conf", "novalue", "--", "true"], "must have a value"),
        (["run", "--run-id", "x", "--rdzv-conf", "a=1", "--rdzv-conf", "a=2", "--", "true"], "more than once"),
        (["run", "--run-id", "x", "--max-restarts", "-1", "--", "true"], "--max-restarts"),
        (["run", "--", "true"], "--run-id"),
        (["run", "--run-id", "x"], "CMD"),
        (["run", "--standalone", "--endpoint", "127.0.0.1:1", "--", "true"], "--standalone"),
        (["run", "--standalone", "--backend", "memory", "--", "true"], "'memory' has none"),
        (["status"], "--run-id"),
        (["server", "mysql"], "mysql"),
        (["nosuchcommand"], "nosuchcommand"),
    ],
)
def test_bad_arguments_give_one_line_and_exit_2(args: list[str], needle: str) -> None:
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    lines = error_lines(result)
    assert len(lines) == 1, lines
    assert lines[0].startswith("rdzv") and ": error: " in lines[0]
    assert needle in lines[0]
    assert "Traceback" not in result.output


def test_unknown_backend_is_one_line_with_install_hint() -> None:
    result = invoke("run", "--backend", "nope", "--run-id", "x", "--", "true")
    assert result.exit_code == 2
    lines = error_lines(result)
    assert len(lines) == 1 and "'nope' is not registered" in lines[0] and "redis" in lines[0]


def test_bad_handler_config_names_the_key() -> None:
    result = invoke(
        "run",
        "--backend",
        "memory",
        "--run-id",
        f"u-{uuid.uuid4().hex}",
        "--rdzv-conf",
        "keep_alive_interval=-1",
        "--",
        "true",
    )
    assert result.exit_code == 2
    assert "keep_alive_interval" in error_lines(result)[-1]


def test_status_of_unknown_run_on_memory_backend() -> None:
    run_id = f"u-{uuid.uuid4().hex}"
    table = invoke("status", "--backend", "memory", "--run-id", run_id)
    assert table.exit_code == 1  # a missing run is an error for scripts; the table is printed all the same
    assert run_id in table.stdout and "state:       none" in table.stdout
    assert error_lines(table) == [
        f"rdzv status: no rendezvous '{run_id}' on memory (nothing joined it, or its record expired)."
    ]
    doc = json.loads(invoke("status", "--backend", "memory", "--run-id", run_id, "--json").stdout)
    assert doc["exists"] is False and doc["run_id"] == run_id and doc["participants"] == []


def test_status_never_prints_the_password() -> None:
    result = invoke(
        "status",
        "--backend",
        "memory",
        "--run-id",
        "x",
        "--endpoint",
        "redis://user:s3cr3t@127.0.0.1:6379/0",
        "--json",
        "--rdzv-conf",
        "password=hunter2",
    )
    assert result.exit_code == 1  # no such run
    assert "s3cr3t" not in result.output and "hunter2" not in result.output
    assert json.loads(result.stdout)["endpoint"] == "redis://127.0.0.1:6379/0"


def test_close_of_unknown_run_fails_in_one_line() -> None:
    result = invoke("close", "--backend", "memory", "--run-id", f"u-{uuid.uuid4().hex}")
    assert result.exit_code == 1
    lines = error_lines(result)
    assert len(lines) == 1 and "nothing to close" in lines[0]


def test_options_from_environment() -> None:
    run_id = f"u-{uuid.uuid4().hex}"
    result = invoke("status", "--json", env={"RDZV_BACKEND": "memory", "RDZV_RUN_ID": run_id})
    assert result.exit_code == 1  # no such run
    doc = json.loads(result.stdout)
    assert doc["backend"] == "memory" and doc["run_id"] == run_id


def test_log_level_is_accepted_on_group_and_command() -> None:
    run_id = f"u-{uuid.uuid4().hex}"
    assert (
        invoke("--log-level", "DEBUG", "status", "--backend", "memory", "--run-id", run_id).exit_code == 1
    )  # no such run
    assert invoke("status", "--log-level", "error", "--backend", "memory", "--run-id", run_id).exit_code == 1
    assert invoke("status", "--log-level", "loud", "--backend", "memory", "--run-id", run_id).exit_code == 2


def test_run_with_memory_backend_single_node(tmp_path) -> None:
    summary = tmp_path / "s.json"
    result = invoke(
        "run", "--backend", "memory", "--run-id", f"u-{uuid.uuid4().hex}", "--local-addr", "127.0.0.1",
        "--summary-file", str(summary), "--", "python", "-c", "import os,sys; sys.exit(0 if os.environ['RANK']=='0' and os.environ['WORLD_SIZE']=='1' else 5)",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    doc = json.loads(summary.read_text())
    assert doc["exit_code"] == 0 and doc["rounds"][0]["outcome"] == "succeeded"


def test_run_exit_code_is_the_programs(tmp_path) -> None:
    result = invoke(
        "run",
        "--backend",
        "memory",
        "--run-id",
        f"u-{uuid.uuid4().hex}",
        "--local-addr",
        "127.0.0.1",
        "--",
        "python",
        "-c",
        "raise SystemExit(7)",
    )
    assert result.exit_code == 7


def test_run_missing_program_exits_127() -> None:
    result = invoke(
        "run",
        "--backend",
        "memory",
        "--run-id",
        f"u-{uuid.uuid4().hex}",
        "--local-addr",
        "127.0.0.1",
        "--",
        "/nonexistent/program",
    )
    assert result.exit_code == 127


@pytest.mark.parametrize(
    ("endpoint", "expected"),
    [
        ("127.0.0.1:6379", "127.0.0.1:6379"),
        ("redis://:pw@h:1/0", "redis://h:1/0"),
        ("rediss://u:pw@h:1", "rediss://h:1"),
        ("redis://h:1/0", "redis://h:1/0"),
        ("", ""),
    ],
)
def test_safe_endpoint(endpoint: str, expected: str) -> None:
    assert safe_endpoint(endpoint) == expected


def test_status_refuses_bad_handler_options_as_run_does() -> None:
    result = invoke("status", "--backend", "memory", "--run-id", "x", "--rdzv-conf", "join_timeout=-1")
    assert result.exit_code == 2 and "join_timeout" in error_lines(result)[-1]


def test_status_of_an_existing_run_exits_0() -> None:
    from rdzv_core.api import RendezvousParameters
    from rdzv_core.registry import get_rendezvous_handler

    run_id = f"u-{uuid.uuid4().hex}"
    handler = get_rendezvous_handler(RendezvousParameters("memory", "", run_id, 1, 1, last_call_timeout=0.1))
    try:
        handler.next_rendezvous()
        result = invoke("status", "--backend", "memory", "--run-id", run_id, "--json")
        assert result.exit_code == 0 and json.loads(result.stdout)["exists"] is True
    finally:
        handler.shutdown()
