"""The ``rdzv`` command: a thin click layer over the library.

* ``rdzv run`` — the elastic agent of one node (:class:`rdzv_core.agent.ElasticAgent`).
* ``rdzv status`` — what a rendezvous is doing (:mod:`rdzv_core.status`), read-only.
* ``rdzv close`` — mark a rendezvous closed (``handler.set_closed()``).
* ``rdzv server redis|etcd`` — a throw-away local server, for development.

Every error is printed as one line on stderr (``rdzv <command>: error: ...``) with a non-zero
exit code; ``--log-level DEBUG`` adds tracebacks. Nothing prints configuration values, so
passwords given with ``--rdzv-conf`` or in an endpoint URL never appear.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import time
import traceback
import uuid
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

import click

from rdzv_core.agent import EXIT_CODES, EXIT_FAILURE, EXIT_RENDEZVOUS, EXIT_USAGE, AgentConfig, ElasticAgent
from rdzv_core.api import RendezvousError, RendezvousParameters
from rdzv_core.plugin import BackendPlugin, LocalServer
from rdzv_core.utils import parse_rendezvous_config

__all__ = ["cli", "main", "CliError", "parse_nnodes"]

logger = logging.getLogger("rdzv_core.cli")

_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class CliError(click.ClickException):
    """An error shown as one line, with its own exit code (default 1)."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        ctx = click.get_current_context(silent=True)
        self.command_path = ctx.command_path if ctx is not None else "rdzv"


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _fail(exc: BaseException) -> NoReturn:
    """Turn a library exception into a :class:`CliError` (one line, mapped exit code)."""
    if isinstance(exc, RendezvousError):
        raise CliError(f"{type(exc).__name__}: {_one_line(str(exc))}", EXIT_RENDEZVOUS) from exc
    if isinstance(exc, (ValueError, ImportError)):
        raise CliError(_one_line(str(exc)), EXIT_USAGE) from exc
    raise CliError(f"{type(exc).__name__}: {_one_line(str(exc))}", EXIT_FAILURE) from exc


# --------------------------------------------------------------------------------------------
# The group: one-line errors for every command


#: click >= 8.2 raises this (a UsageError) for a group called without a command.
_NO_ARGS_IS_HELP: Any = getattr(click.exceptions, "NoArgsIsHelpError", ())


class _RdzvGroup(click.Group):
    """A group whose ``main`` prints every error as one line (also under ``CliRunner``)."""

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        code: int
        try:
            result = super().main(args, prog_name or "rdzv", complete_var, standalone_mode=False, **extra)
            code = result if isinstance(result, int) else 0
        except _NO_ARGS_IS_HELP as exc:  # 'rdzv' alone: the help, as is
            click.echo(exc.format_message(), err=True)
            code = exc.exit_code
        except click.UsageError as exc:
            where = exc.ctx.command_path if exc.ctx is not None else "rdzv"
            click.echo(f"{where}: error: {_one_line(exc.format_message())} (see '{where} --help')", err=True)
            code = exc.exit_code
        except click.ClickException as exc:
            where = _command_path(exc)
            click.echo(f"{where}: error: {_one_line(exc.format_message())}", err=True)
            _debug_traceback(exc)
            code = exc.exit_code
        except click.exceptions.Abort:
            click.echo("rdzv: aborted", err=True)
            code = 130
        except KeyboardInterrupt:
            click.echo("rdzv: interrupted", err=True)
            code = 130
        except Exception as exc:  # a bug: still one line, the traceback at DEBUG level
            click.echo(
                f"rdzv: internal error: {type(exc).__name__}: {_one_line(str(exc))} (use --log-level DEBUG for the traceback)",
                err=True,
            )
            _debug_traceback(exc)
            code = EXIT_FAILURE
        if standalone_mode:
            sys.exit(code)
        return code


def _command_path(exc: BaseException) -> str:
    return str(getattr(exc, "command_path", "rdzv"))


def _debug_traceback(exc: BaseException) -> None:
    if logging.getLogger().isEnabledFor(logging.DEBUG):
        click.echo("".join(traceback.format_exception(exc)).rstrip(), err=True)


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the time of each record (so an in-process
    run under a test runner never keeps a stale, closed stream)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def _setup_logging(level: str | None, default: str) -> None:
    """Log records of ``level`` (default ``default``) and above to stderr, one line each.

    Replaces only the handler a previous call installed; other handlers of the root logger
    (e.g. a test runner's) are left alone."""
    name = (level or default).upper()
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, _StderrHandler):
            root.removeHandler(handler)
    handler = _StderrHandler()
    handler.setFormatter(
        logging.Formatter(
            "%(asctime)s.%(msecs)03d rdzv[%(process)d] %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
        )
    )
    root.addHandler(handler)
    root.setLevel(name)


def _log_level_callback(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None:
        ctx.ensure_object(dict)["log_level"] = value
    return value


def _log_level_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--log-level",
        type=click.Choice(_LOG_LEVELS, case_sensitive=False),
        default=None,
        envvar="RDZV_LOG_LEVEL",
        expose_value=False,
        is_eager=True,
        callback=_log_level_callback,
        help="Logging level on stderr (env RDZV_LOG_LEVEL). Default: INFO for 'run' and 'server', WARNING otherwise.",
    )(func)


def _configure(ctx: click.Context, default: str) -> None:
    root = ctx.find_root()
    level = (ctx.obj or {}).get("log_level") or (root.obj or {}).get("log_level")
    _setup_logging(level, default)


_CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@click.group(name="rdzv", cls=_RdzvGroup, context_settings=_CONTEXT)
@click.version_option(package_name="rdzv", prog_name="rdzv")
@_log_level_option
@click.pass_context
def cli(ctx: click.Context) -> None:
    """Elastic rendezvous without torch: run, inspect and close rendezvous.

    \b
    Start a development server, then two agents (in two shells):
      rdzv server redis                       # prints 127.0.0.1:PORT
      rdzv run --endpoint 127.0.0.1:PORT --run-id job1 --nnodes 2 -- python train.py
      rdzv run --endpoint 127.0.0.1:PORT --run-id job1 --nnodes 2 -- python train.py
    Look at it, and end it:
      rdzv status --endpoint 127.0.0.1:PORT --run-id job1
      rdzv close  --endpoint 127.0.0.1:PORT --run-id job1
    One machine, nothing to set up:
      rdzv run --standalone -- python train.py

    Options shared by the commands can come from the environment: RDZV_BACKEND,
    RDZV_ENDPOINT, RDZV_RUN_ID, RDZV_CONF, RDZV_LOG_LEVEL, or torchrun's PET_RDZV_BACKEND,
    PET_RDZV_ENDPOINT, PET_RDZV_ID, PET_RDZV_CONF (and, for run, PET_NNODES,
    PET_MAX_RESTARTS, PET_STANDALONE, PET_LOCAL_ADDR, PET_MONITOR_INTERVAL). An option on the
    command line wins, then RDZV_*, then PET_*.

    Shell completion: eval "$(rdzv completion bash)" (or zsh, fish).
    """
    ctx.ensure_object(dict)


# --------------------------------------------------------------------------------------------
# Shared options


def parse_nnodes(text: str) -> tuple[int, int]:
    """Parse ``--nnodes``: ``"N"`` (min = max = N) or ``"MIN:MAX"``.

    Returns:
        ``(min_nodes, max_nodes)`` with ``1 <= min_nodes <= max_nodes``.

    Raises:
        ValueError: not of that form, a number below 1, or ``MIN > MAX``.
    """
    parts = text.strip().split(":")
    if len(parts) not in (1, 2) or not all(p.strip().isdigit() for p in parts):
        raise ValueError(f"'{text}' is not N or MIN:MAX (positive integers).")
    low, high = int(parts[0]), int(parts[-1])
    if low < 1:
        raise ValueError(f"the number of nodes must be >= 1 (got '{text}').")
    if low > high:
        raise ValueError(f"MIN ({low}) must be <= MAX ({high}) in '{text}'.")
    return low, high


class _NNodes(click.ParamType):
    name = "MIN[:MAX]"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[int, int]:
        if isinstance(value, tuple):
            return value
        try:
            return parse_nnodes(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


def _conf_callback(ctx: click.Context, param: click.Parameter, values: Sequence[str]) -> dict[str, str]:
    merged: dict[str, str] = {}
    for value in values or ():
        try:
            items = parse_rendezvous_config(value)
        except ValueError as exc:
            raise click.BadParameter(str(exc), ctx, param) from None
        for key, item in items.items():
            if key in merged:
                raise click.BadParameter(
                    f"The rendezvous configuration key '{key}' is given more than once.", ctx, param
                )
            merged[key] = item
    return merged


def _complete_backend(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[str]:
    """Shell completion of ``--backend``: the names of the installed plug-ins."""
    from rdzv_core.registry import rendezvous_handler_registry

    try:
        names = sorted(plugin.name for plugin in rendezvous_handler_registry.plugins())
    except Exception:  # completion must never fail loudly
        return []
    return [name for name in names if name.startswith(incomplete)]


def _rendezvous_options(require_run_id: bool) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        options = [
            click.option(
                "--backend",
                default="redis",
                show_default=True,
                envvar=["RDZV_BACKEND", "PET_RDZV_BACKEND"],
                metavar="NAME",
                shell_complete=_complete_backend,
                help="Rendezvous backend: redis, etcd-v3, etcd-v2, memory or a plug-in (env RDZV_BACKEND or torchrun's PET_RDZV_BACKEND).",
            ),
            click.option(
                "--endpoint",
                default="",
                envvar=["RDZV_ENDPOINT", "PET_RDZV_ENDPOINT"],
                metavar="HOST:PORT|URL",
                help="Backend endpoint, e.g. 127.0.0.1:6379 or rediss://host:6380/0 (env RDZV_ENDPOINT or PET_RDZV_ENDPOINT; default: the backend's local default).",
            ),
            click.option(
                "--run-id",
                envvar=["RDZV_RUN_ID", "PET_RDZV_ID"],
                metavar="ID",
                required=require_run_id,
                help="Id of the job; every node of the job uses the same (env RDZV_RUN_ID or PET_RDZV_ID).",
            ),
            click.option(
                "--rdzv-conf",
                multiple=True,
                envvar=["RDZV_CONF", "PET_RDZV_CONF"],
                metavar="K=V,...",
                callback=_conf_callback,
                help="Backend and handler configuration, e.g. last_call_timeout=1,keep_alive_interval=0.5,password=... (repeatable; env RDZV_CONF or PET_RDZV_CONF).",
            ),
        ]
        for option in reversed(options):
            func = option(func)
        return func

    return decorate


def _params(
    backend: str,
    endpoint: str,
    run_id: str,
    conf: dict[str, str],
    nnodes: tuple[int, int] = (1, 1),
    local_addr: str | None = None,
) -> RendezvousParameters:
    try:
        return RendezvousParameters(backend, endpoint, run_id, nnodes[0], nnodes[1], local_addr=local_addr, **conf)
    except ValueError as exc:
        _fail(exc)


# --------------------------------------------------------------------------------------------
# Servers (lazy imports: the plug-ins are optional)


def _server_plugins() -> list[BackendPlugin]:
    from rdzv_core.registry import rendezvous_handler_registry

    return [plugin for plugin in rendezvous_handler_registry.plugins() if plugin.local_server is not None]


def _plugin_of_kind(kind: str) -> BackendPlugin:
    """The first plug-in (by name) whose local server is ``rdzv server KIND``.

    Raises:
        CliError: no installed plug-in has one (the message lists the kinds there are).
    """
    plugins = _server_plugins()
    for plugin in plugins:
        if plugin.server_kind == kind:
            return plugin
    kinds = sorted({str(plugin.server_kind) for plugin in plugins})
    raise CliError(
        f"No installed plug-in has a local '{kind}' server; these do: {', '.join(kinds) or 'none'}.", EXIT_USAGE
    )


def _make_server(plugin: BackendPlugin, port: int | None = None, *, cluster: bool = False) -> LocalServer:
    """Create (not start) the local server of ``plugin`` (its launcher imports lazily), or
    with ``cluster`` its local cluster.

    Raises:
        CliError: the plug-in has no local cluster, the launcher or the server binary is
            missing, or it cannot take ``port``.
    """
    factory = plugin.local_cluster if cluster else plugin.local_server
    if factory is None:
        raise CliError(
            f"The {plugin.server_kind} server of the '{plugin.name}' plug-in has no --cluster mode.", EXIT_USAGE
        )
    try:
        return factory(port)  # type: ignore[no-any-return]
    except ImportError as exc:
        raise CliError(
            f"The {plugin.server_kind} server launcher is not available ({_one_line(str(exc))}); {plugin.install_hint}",
            EXIT_USAGE,
        ) from exc
    except ValueError as exc:
        raise CliError(_one_line(str(exc)), EXIT_USAGE) from exc
    except FileNotFoundError as exc:
        raise CliError(_one_line(str(exc)), EXIT_FAILURE) from exc


def _start_server(server: Any, kind: str) -> None:
    try:
        server.start()
    except FileNotFoundError as exc:
        raise CliError(_one_line(str(exc)), EXIT_FAILURE) from exc
    except (RuntimeError, OSError) as exc:
        raise CliError(f"The local {kind} server did not start: {_one_line(str(exc))}", EXIT_FAILURE) from exc


def _worker_env(backend: str, endpoint: str, rdzv_conf: dict[str, str]) -> dict[str, str]:
    """What a worker of ``rdzv run`` learns of the rendezvous: the backend, the endpoint
    without credentials and the configuration without secrets (a worker that opens the
    round's store takes its password from the backend's environment variable, e.g.
    ``RDZV_REDIS_PASSWORD``, which it inherits only when the user set it)."""
    from rdzv_core.plugin import without_secrets
    from rdzv_core.registry import rendezvous_handler_registry
    from rdzv_core.status import safe_endpoint

    plugin = rendezvous_handler_registry.plugin(backend)
    conf = plugin.without_secrets(rdzv_conf) if plugin is not None else without_secrets(rdzv_conf)
    return {
        "RDZV_BACKEND": backend,
        "RDZV_ENDPOINT": safe_endpoint(endpoint),
        "RDZV_CONF": ",".join(f"{k}={v}" for k, v in conf.items()),
    }


def _serve_metrics(ctx: click.Context, handler: Any, agent: ElasticAgent, port: int, addr: str) -> Callable[[], None]:
    """Start the Prometheus exporter of ``rdzv run --metrics-port`` on the handler's event
    hook and the agent's round hook; return what stops it."""
    from rdzv_core.metrics import MetricsServer, RendezvousMetrics

    try:
        metrics = RendezvousMetrics(handler.get_run_id(), getattr(getattr(handler, "node", None), "key", ""))
        server = MetricsServer(metrics, port, addr)
    except ImportError as exc:
        raise click.UsageError(str(exc), ctx) from None
    except OSError as exc:
        raise click.UsageError(f"--metrics-port {port}: cannot listen on {addr}:{port}: {exc}", ctx) from None
    add_listener = getattr(handler, "add_event_listener", None)
    if callable(add_listener):
        add_listener(metrics.on_event)
    else:
        logger.warning(
            "The %s handler has no event hook: the metrics show the agent's rounds only.", type(handler).__name__
        )
    agent.add_round_listener(metrics.on_round_end)
    logger.info("Metrics: http://%s:%d/metrics", addr, server.port)
    return server.close


def _standalone_plugin(ctx: click.Context, backend: str) -> BackendPlugin:
    """The plug-in of ``backend`` when it has a local server, for ``rdzv run --standalone``."""
    from rdzv_core.registry import rendezvous_handler_registry

    plugin = rendezvous_handler_registry.plugin(backend)
    if plugin is None or plugin.local_server is None:
        names = ", ".join(p.name for p in _server_plugins()) or "none"
        raise click.UsageError(
            f"--standalone starts the backend's local server, and '{backend}' has none (these do: {names}).", ctx
        )
    return plugin


@cli.command(context_settings=_CONTEXT)
@click.argument("kind")
@click.option("--port", type=click.IntRange(1, 65535), default=None, help="TCP port (default: a free one).")
@click.option(
    "--cluster",
    is_flag=True,
    help="Start a local cluster instead (redis: 3 masters + 3 replicas); the endpoint lists every node.",
)
@_log_level_option
@click.pass_context
def server(ctx: click.Context, kind: str, port: int | None, cluster: bool) -> None:
    """Run a throw-away local KIND server in the foreground, for development.

    KIND is a plug-in's local server: redis, or etcd (both APIs), with the plug-ins rdzv ships.

    The first line on stdout is the endpoint (HOST:PORT), so a script can read it. The
    server listens on 127.0.0.1 only, keeps nothing on disk, and stops on Ctrl-C or SIGTERM.

    \b
    Examples:
      rdzv server redis
      rdzv server redis --port 6390
      EP=$(rdzv server redis | head -1)   # in a script (keep the process alive)
      rdzv server redis --cluster             # a Redis Cluster: use with --rdzv-conf cluster=true
    """
    _configure(ctx, "INFO")
    srv = _make_server(_plugin_of_kind(kind), port, cluster=cluster)
    _start_server(srv, kind)
    stop: list[int] = []

    def on_signal(signum: int, frame: object) -> None:
        stop.append(signum)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        click.echo(srv.endpoint)
        sys.stdout.flush()
        backend = "redis" if kind == "redis" else "etcd-v3"
        click.echo(f"A local {kind} server listens on {srv.endpoint}; stop it with Ctrl-C. Use it with:", err=True)
        conf = ",".join(f"{k}={v}" for k, v in getattr(srv, "rdzv_conf", {}).items())
        extra = f" RDZV_CONF={conf}" if conf else ""
        click.echo(f"  export RDZV_BACKEND={backend} RDZV_ENDPOINT={srv.endpoint}{extra}", err=True)
        while not stop:
            if not srv.running:
                raise CliError(f"The local {kind} server on {srv.endpoint} exited unexpectedly.")
            time.sleep(0.2)
    finally:
        for s, old in previous.items():
            signal.signal(s, old)
        srv.stop()
    click.echo(f"The local {kind} server on {srv.endpoint} has stopped.", err=True)
    ctx.exit(0)


# --------------------------------------------------------------------------------------------
# rdzv run


_RUN_EPILOG = "\b\nExit codes:\n" + "\n".join(f"  {code:<8} {meaning}" for code, meaning in EXIT_CODES.items())


@cli.command(context_settings={**_CONTEXT, "allow_interspersed_args": False}, epilog=_RUN_EPILOG)
@_rendezvous_options(require_run_id=False)
@click.option(
    "--nnodes",
    envvar="PET_NNODES",
    type=_NNodes(),
    default="1",
    show_default=True,
    help="Nodes of a round: N, or MIN:MAX for an elastic job.",
)
@click.option(
    "--max-restarts",
    envvar="PET_MAX_RESTARTS",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Worker failures answered with a re-rendezvous and restart (scaling events do not count).",
)
@click.option(
    "--standalone",
    envvar="PET_STANDALONE",
    is_flag=True,
    help="Start the backend's embedded local server (Redis by default; one machine, nothing to set up); --endpoint must not be given.",
)
@click.option(
    "--local-addr",
    envvar="PET_LOCAL_ADDR",
    default=None,
    metavar="ADDR",
    help="Address this node advertises (MASTER_ADDR when it is rank 0). Default: its FQDN; 127.0.0.1 with --standalone.",
)
@click.option(
    "--monitor-interval",
    envvar="PET_MONITOR_INTERVAL",
    type=click.FloatRange(min=0.01),
    default=0.2,
    show_default=True,
    help="Seconds between checks of the worker and of nodes waiting to join.",
)
@click.option(
    "--stop-timeout",
    type=click.FloatRange(min=0),
    default=5.0,
    show_default=True,
    help="Seconds a stopped worker gets between SIGTERM and SIGKILL.",
)
@click.option(
    "--exit-barrier-timeout",
    type=click.FloatRange(min=0.1),
    default=300.0,
    show_default=True,
    help="Seconds a node whose program succeeded waits for the other nodes.",
)
@click.option(
    "--summary-file",
    type=click.Path(dir_okay=False, writable=True),
    default=None,
    help="Write a JSON summary (rounds, ranks, rendezvous times, exit code) here when the agent ends.",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    default=None,
    metavar="PORT",
    help="Serve Prometheus metrics of this node on http://ADDR:PORT/metrics (0: a free port, logged). Needs the metrics extra: pip install 'rdzv[metrics]'.",
)
@click.option(
    "--metrics-addr",
    default="0.0.0.0",
    show_default=True,
    metavar="ADDR",
    help="Address the metrics server binds (with --metrics-port).",
)
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED, metavar="-- CMD [ARGS]...")
@_log_level_option
@click.pass_context
def run(
    ctx: click.Context,
    backend: str,
    endpoint: str,
    run_id: str | None,
    rdzv_conf: dict[str, str],
    nnodes: tuple[int, int],
    max_restarts: int,
    standalone: bool,
    local_addr: str | None,
    monitor_interval: float,
    stop_timeout: float,
    exit_barrier_timeout: float,
    summary_file: str | None,
    metrics_port: int | None,
    metrics_addr: str,
    command: tuple[str, ...],
) -> None:
    """Run CMD on this node as part of an elastic job (one agent per node).

    The agent joins the rendezvous, then starts CMD with RANK, WORLD_SIZE, MASTER_ADDR,
    MASTER_PORT, RDZV_RUN_ID, RDZV_ROUND, RDZV_RESTART_COUNT and the store's RDZV_BACKEND,
    RDZV_ENDPOINT, RDZV_STORE_PREFIX, RDZV_CONF in its environment
    (rdzv_core.agent.open_worker_store() opens the round's store from them). Secrets are
    not passed on: no password in RDZV_CONF, no credentials in RDZV_ENDPOINT; a worker that
    opens the store of a protected server needs the backend's password variable
    (RDZV_REDIS_PASSWORD, RDZV_ETCD_PASSWORD) in its environment. It forwards
    SIGINT/SIGTERM to CMD. When CMD fails, or nodes join or leave, it stops CMD (SIGTERM,
    then SIGKILL), re-rendezvouses and restarts it. When CMD succeeds on every node the job
    ends and the rendezvous is closed.

    \b
    Examples:
      rdzv run --standalone -- python train.py
      rdzv run --endpoint 10.0.0.5:6379 --run-id job42 --nnodes 2:4 --max-restarts 3 \\
          --rdzv-conf last_call_timeout=5 -- python train.py --epochs 10
      rdzv run --endpoint rediss://redis.internal:6380 --run-id job42 --nnodes 8 \\
          --rdzv-conf ssl_ca_certs=/etc/ca.pem -- ./my_mpi_free_job
    """
    _configure(ctx, "INFO")
    if standalone and endpoint:
        raise click.UsageError("--standalone starts its own server: do not give --endpoint.", ctx)
    standalone_plugin = _standalone_plugin(ctx, backend) if standalone else None
    if not run_id:
        if not standalone:
            raise click.UsageError(
                "Missing --run-id (or env RDZV_RUN_ID): every node of a job must use the same id.", ctx
            )
        run_id = f"standalone-{uuid.uuid4().hex[:8]}"
    try:
        config = AgentConfig(
            command,
            max_restarts=max_restarts,
            monitor_interval=monitor_interval,
            stop_timeout=stop_timeout,
            exit_barrier_timeout=exit_barrier_timeout,
        )
    except ValueError as exc:
        raise click.UsageError(str(exc), ctx) from None
    srv = None
    closers: list[Callable[[], None]] = []
    if standalone_plugin is not None:
        kind = str(standalone_plugin.server_kind)
        srv = _make_server(standalone_plugin)
        _start_server(srv, kind)
        endpoint = srv.endpoint
        local_addr = local_addr or "127.0.0.1"
        logger.info("Standalone: an embedded %s server listens on %s; run id '%s'.", kind, endpoint, run_id)
    try:
        params = _params(backend, endpoint, run_id, rdzv_conf, nnodes, local_addr)
        from rdzv_core.registry import get_rendezvous_handler

        try:
            handler = get_rendezvous_handler(params)
        except (RendezvousError, ValueError, ImportError) as exc:
            _fail(exc)
        worker_env = _worker_env(backend, endpoint, rdzv_conf)
        agent = ElasticAgent(handler, config, worker_env)
        if metrics_port is not None:
            closers.append(_serve_metrics(ctx, handler, agent, metrics_port, metrics_addr))
        logger.info(
            "Agent of run '%s' (%s, nodes %d:%d) starts: %s", run_id, backend, nnodes[0], nnodes[1], " ".join(command)
        )
        with agent.signal_handlers():
            result = agent.run()
    finally:
        for close in reversed(closers):
            close()
        if srv is not None:
            srv.stop()
    if summary_file:
        try:
            result.write_json(summary_file)
        except OSError as exc:
            logger.error("Cannot write the summary file %s: %s", summary_file, exc)
    if result.exit_code == EXIT_RENDEZVOUS:
        click.echo(f"rdzv run: error: {_one_line(result.reason)}", err=True)
    ctx.exit(result.exit_code)


# --------------------------------------------------------------------------------------------
# rdzv status / close


@cli.command(context_settings=_CONTEXT)
@_rendezvous_options(require_run_id=False)
@click.option(
    "--all", "all_runs", is_flag=True, help="List every run on the server (one line each) instead of one run."
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document (for scripts) instead of a table.")
@_log_level_option
@click.pass_context
def status(
    ctx: click.Context,
    backend: str,
    endpoint: str,
    run_id: str | None,
    rdzv_conf: dict[str, str],
    all_runs: bool,
    as_json: bool,
) -> None:
    """Show what a rendezvous is doing, without joining it.

    Shows the round, whether it is complete or closed, the participants with rank, address,
    agent pid and the age of their last heartbeat, and the wait and redundancy lists. With
    --all, one line per run on the server (redis: SCAN of rdzv:{*}:*; etcd: the runs under
    the key root).

    \b
    JSON fields: run_id, backend, endpoint, exists, round, complete, closed, world_size,
    min_nodes, max_nodes, needed, last_call_timeout, last_call_in, last_call_at, read_at,
    and participants/wait_list/redundancy_list: lists of
    {node, role, rank, addr, pid, heartbeat_age} (seconds; null = no live record).
    With --all: a list of such documents.

    \b
    Exit code 1 when the run does not exist (the table or JSON is printed all the same).

    \b
    Examples:
      rdzv status --endpoint 127.0.0.1:6379 --run-id job42
      rdzv status --endpoint 127.0.0.1:6379 --run-id job42 --json | jq .participants
      rdzv status --endpoint 127.0.0.1:6379 --all
    """
    _configure(ctx, "WARNING")
    from rdzv_core.status import collect_all_status, collect_status, format_runs_table, format_status_table

    if all_runs:
        if run_id:
            raise click.UsageError("--all lists every run: do not give --run-id.", ctx)
        try:
            statuses = collect_all_status(_params(backend, endpoint, "-", rdzv_conf))
        except (RendezvousError, ValueError, ImportError) as exc:
            _fail(exc)
        click.echo(json.dumps([s.to_dict() for s in statuses], indent=2) if as_json else format_runs_table(statuses))
        ctx.exit(0)
    if not run_id:
        raise click.UsageError("Missing --run-id (or env RDZV_RUN_ID), or --all.", ctx)
    params = _params(backend, endpoint, run_id, rdzv_conf)
    try:
        result = collect_status(params)
    except (RendezvousError, ValueError, ImportError) as exc:
        _fail(exc)
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
    else:
        click.echo(format_status_table(result))
    if not result.exists:
        click.echo(
            f"rdzv status: no rendezvous '{run_id}' on {result.endpoint or backend} (nothing joined it, or its record expired).",
            err=True,
        )
        ctx.exit(EXIT_FAILURE)
    ctx.exit(0)


@cli.command(context_settings=_CONTEXT)
@_rendezvous_options(require_run_id=False)
@click.option("--all-closed", is_flag=True, help="Reset every closed run on the server (live runs are left alone).")
@click.option("--force", is_flag=True, help="Also reset a run that is not closed (its nodes lose their round).")
@_log_level_option
@click.pass_context
def reset(
    ctx: click.Context,
    backend: str,
    endpoint: str,
    run_id: str | None,
    rdzv_conf: dict[str, str],
    all_closed: bool,
    force: bool,
) -> None:
    """Delete a run's keys, so a new job can use its run id at once.

    A closed run's keys expire by themselves after closed_ttl (300 s by default); until then
    a node joining under that run id gets RendezvousClosedError. reset deletes them now:
    the state, membership, liveness records, join queue and store of the run. A run that is
    not closed is refused unless --force (its nodes then re-join a fresh rendezvous).

    \b
    Examples:
      rdzv reset --endpoint 127.0.0.1:6379 --run-id job42
      rdzv reset --endpoint 127.0.0.1:6379 --all-closed
    """
    _configure(ctx, "WARNING")
    from rdzv_core.status import ResetRefused, collect_all_status, reset_run

    if all_closed == bool(run_id):
        raise click.UsageError("Give either --run-id ID or --all-closed.", ctx)
    try:
        if run_id:
            targets = [run_id]
        else:
            targets = [s.run_id for s in collect_all_status(_params(backend, endpoint, "-", rdzv_conf)) if s.closed]
        for target in targets:
            deleted = reset_run(_params(backend, endpoint, target, rdzv_conf), force=force)
            click.echo(f"Reset the rendezvous '{target}': {deleted} key(s) deleted.")
    except ResetRefused as exc:
        raise CliError(str(exc), EXIT_FAILURE) from None
    except (RendezvousError, ValueError, ImportError) as exc:
        _fail(exc)
    if not targets:
        click.echo("No closed run to reset.")
    ctx.exit(0)


@cli.command(context_settings=_CONTEXT)
@_rendezvous_options(require_run_id=True)
@_log_level_option
@click.pass_context
def close(ctx: click.Context, backend: str, endpoint: str, run_id: str, rdzv_conf: dict[str, str]) -> None:
    """Mark a rendezvous closed: the job ends.

    Agents stop their programs and exit with code 3; nodes trying to join fail. A closed
    run id cannot be reused (while its keys live). Fails when the run has no state.

    \b
    Example:
      rdzv close --endpoint 127.0.0.1:6379 --run-id job42
    """
    _configure(ctx, "WARNING")
    from rdzv_core.registry import get_rendezvous_handler
    from rdzv_core.status import read_state, safe_endpoint

    params = _params(backend, endpoint, run_id, rdzv_conf)
    try:
        handler = get_rendezvous_handler(params)
        backend_obj = getattr(handler, "backend", None)
        try:
            if backend_obj is not None:
                current = read_state(backend_obj, run_id)
                if current is None:
                    raise CliError(
                        f"The run '{run_id}' has no rendezvous state at {backend} {safe_endpoint(endpoint) or '(default endpoint)'}: nothing to close.",
                        EXIT_FAILURE,
                    )
                if current.closed:
                    click.echo(f"The rendezvous '{run_id}' was already closed.")
                    ctx.exit(0)
            handler.set_closed()
        finally:
            if backend_obj is not None:
                backend_obj.close()
    except (RendezvousError, ValueError, ImportError) as exc:
        _fail(exc)
    click.echo(f"Closed the rendezvous '{run_id}'.")
    ctx.exit(0)


@cli.command(context_settings=_CONTEXT)
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell: str) -> None:
    """Print the shell completion script of rdzv for SHELL.

    \b
    Examples:
      eval "$(rdzv completion bash)"          # in ~/.bashrc
      rdzv completion fish > ~/.config/fish/completions/rdzv.fish
    """
    from click.shell_completion import get_completion_class

    completer = get_completion_class(shell)
    assert completer is not None  # the choices are click's built-in shells
    click.echo(completer(cli, {}, "rdzv", "_RDZV_COMPLETE").source())


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``rdzv`` console script: run the CLI and exit with its code.

    Args:
        argv: Arguments (default ``sys.argv[1:]``).
    """
    cli.main(args=list(argv) if argv is not None else None, prog_name="rdzv")


if __name__ == "__main__":
    main()
