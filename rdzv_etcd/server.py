"""A throw-away local etcd server for tests, examples and single-machine jobs.

:class:`EtcdServer` runs the ``etcd`` binary (``$RDZV_ETCD_BINARY``, else ``etcd`` from
``PATH``) as a single-member cluster on free client/peer ports of ``127.0.0.1``, with its data
and log in a temporary directory::

    with EtcdServer(enable_v2=True) as server:
        params = RendezvousParameters("etcd-v3", server.endpoint, "job", 1, 4)
        ...
        server.restart()        # same ports and data: for fault-injection tests
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import shutil
import signal
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import IO, Any

from rdzv_core.utils import get_free_port

__all__ = ["EtcdServer", "ETCD_BINARY_ENV", "find_etcd_binary"]

logger = logging.getLogger(__name__)

#: Environment variable naming the etcd binary to run.
ETCD_BINARY_ENV = "RDZV_ETCD_BINARY"
#: Largest request the test server accepts (etcd's default is 1.5 MiB; c10d stores hold more).
DEFAULT_MAX_REQUEST_BYTES = 32 * 1024 * 1024
_PORT_ATTEMPTS = 3


def find_etcd_binary(binary: str | None = None) -> str:
    """Return the path of the etcd binary: ``binary``, ``$RDZV_ETCD_BINARY``, or ``etcd`` on PATH.

    Raises:
        FileNotFoundError: none found; the message says how to provide one.
    """
    candidate = binary or os.environ.get(ETCD_BINARY_ENV) or "etcd"
    path = candidate if os.path.sep in candidate else shutil.which(candidate)
    if not path or not os.access(path, os.X_OK):
        raise FileNotFoundError(
            f"No etcd binary found (looked for {candidate!r}). Install etcd, put it on PATH, "
            f"or set {ETCD_BINARY_ENV} to its path."
        )
    return path


class EtcdServer:
    """A single-member etcd cluster in a child process.

    Args:
        enable_v2: Also serve the v2 API (``--enable-v2``; etcd 3.4/3.5 only).
        binary: Path or name of the etcd binary (default: :func:`find_etcd_binary`).
        host: Address to listen on (``127.0.0.1``).
        data_dir: Data directory to use and keep; default: a temporary one, deleted by
            :meth:`stop`.
        startup_timeout: Seconds to wait for ``/health`` (float).
        max_request_bytes: ``--max-request-bytes`` (int).
        cert_file, key_file: Server certificate and key (PEM paths): serve clients over TLS
            (``https://``; peers stay on plain HTTP on ``127.0.0.1``).
        client_ca_file: CA (PEM path) that client certificates must chain to; requires them
            (``--client-cert-auth``).
        extra_args: More command-line flags for etcd.

    Raises (:meth:`start`, :meth:`restart`):
        FileNotFoundError: no etcd binary.
        RuntimeError: etcd exited or was not healthy within ``startup_timeout``; the message
            has the end of its log.
    """

    def __init__(
        self,
        *,
        enable_v2: bool = False,
        binary: str | None = None,
        host: str = "127.0.0.1",
        data_dir: str | None = None,
        startup_timeout: float = 30.0,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
        cert_file: str | None = None,
        key_file: str | None = None,
        client_ca_file: str | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        if bool(cert_file) != bool(key_file):
            raise ValueError("EtcdServer needs both 'cert_file' and 'key_file' for TLS.")
        if client_ca_file and not cert_file:
            raise ValueError("EtcdServer needs 'cert_file'/'key_file' to require client certificates.")
        self.enable_v2 = enable_v2
        self.cert_file, self.key_file, self.client_ca_file = cert_file, key_file, client_ca_file
        self.binary = self._resolve_binary(binary)
        self._host = host
        self._given_data_dir = data_dir
        self.startup_timeout = startup_timeout
        self.max_request_bytes = max_request_bytes
        self.extra_args = list(extra_args)
        self._port: int | None = None
        self._peer_port: int | None = None
        self._base_dir: str | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def _resolve_binary(self, binary: str | None) -> str:
        """The etcd executable to run (:func:`find_etcd_binary`; a hook for launchers that
        run etcd elsewhere, e.g. in a container)."""
        return find_etcd_binary(binary)

    # -- properties -----------------------------------------------------------------------

    @property
    def host(self) -> str:
        """The address etcd listens on."""
        return self._host

    @property
    def port(self) -> int:
        """The client port (int). Raises RuntimeError before :meth:`start`."""
        if self._port is None:
            raise RuntimeError("The etcd server has not been started.")
        return self._port

    @property
    def peer_port(self) -> int:
        """The peer (raft) port."""
        if self._peer_port is None:
            raise RuntimeError("The etcd server has not been started.")
        return self._peer_port

    @property
    def endpoint(self) -> str:
        """``host:port``, the form rendezvous parameters take."""
        return f"{self._host}:{self.port}"

    @property
    def protocol(self) -> str:
        """``"https"`` when serving TLS, else ``"http"``."""
        return "https" if self.cert_file else "http"

    @property
    def url(self) -> str:
        """``http(s)://host:port``."""
        return f"{self.protocol}://{self._host}:{self.port}"

    @property
    def data_dir(self) -> str:
        """The data directory (kept across :meth:`restart`)."""
        if self._given_data_dir:
            return self._given_data_dir
        if self._base_dir is None:
            raise RuntimeError("The etcd server has not been started.")
        return os.path.join(self._base_dir, "data")

    @property
    def log_path(self) -> str | None:
        """etcd's combined stdout/stderr, or ``None`` before :meth:`start`."""
        return None if self._base_dir is None else os.path.join(self._base_dir, "etcd.log")

    @property
    def running(self) -> bool:
        """Whether the etcd process is alive (:class:`rdzv_core.plugin.LocalServer`)."""
        return self.is_running

    @property
    def pid(self) -> int | None:
        """The process id of the running etcd, or ``None``."""
        return self._process.pid if self.is_running and self._process is not None else None

    @property
    def is_running(self) -> bool:
        """Whether the etcd process is alive."""
        return self._process is not None and self._process.poll() is None

    def __repr__(self) -> str:
        state = "running" if self.is_running else "stopped"
        where = self.url if self._port else "no port"
        return f"EtcdServer({where}, v2={'on' if self.enable_v2 else 'off'}, {state})"

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> EtcdServer:
        """Start etcd on free ports and wait until it is healthy; return ``self``."""
        if self.is_running:
            return self
        if self._base_dir is None:
            self._base_dir = tempfile.mkdtemp(prefix="rdzv-etcd-")
            atexit.register(self.stop)
        for attempt in range(_PORT_ATTEMPTS):
            self._port, self._peer_port = get_free_port(self._host), get_free_port(self._host)
            try:
                self._launch()
                return self
            except RuntimeError as exc:
                if "address already in use" not in str(exc) or attempt == _PORT_ATTEMPTS - 1:
                    self.stop()
                    raise
                logger.info("etcd lost a port race, retrying on new ports")
        raise AssertionError("unreachable")

    def stop(self) -> None:
        """Stop etcd (SIGTERM, then SIGKILL after 10 s) and delete the temporary directory."""
        self._terminate()
        if self._base_dir is not None:
            shutil.rmtree(self._base_dir, ignore_errors=True)
            self._base_dir = None
        atexit.unregister(self.stop)

    def restart(self, *, keep_data: bool = True, kill: bool = False) -> None:
        """Stop etcd (``kill``: SIGKILL, as a crash) and start it again on the same ports;
        wait until it is healthy. ``keep_data=False`` starts it on an empty data directory
        (a member that lost its disk: every key is gone)."""
        if self._port is None:
            raise RuntimeError("The etcd server has not been started.")
        self._terminate(kill=kill)
        if not keep_data:
            shutil.rmtree(self.data_dir, ignore_errors=True)
        self._launch()

    def halt(self, *, kill: bool = False) -> None:
        """Stop the process but keep ports and data, for a later :meth:`restart`."""
        self._terminate(kill=kill)

    def kill(self) -> None:
        """SIGKILL etcd as a crash (ports and data kept); :meth:`restart` revives it."""
        self.halt(kill=True)

    def __enter__(self) -> EtcdServer:
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    # -- helpers --------------------------------------------------------------------------

    def _command(self) -> list[str]:
        client_url = f"{self.protocol}://{self._host}:{self._port}"
        peer_url = f"http://{self._host}:{self._peer_port}"
        command = [
            self.binary,
            "--name", "rdzv-test",
            "--data-dir", self.data_dir,
            "--listen-client-urls", client_url,
            "--advertise-client-urls", client_url,
            "--listen-peer-urls", peer_url,
            "--initial-advertise-peer-urls", peer_url,
            "--initial-cluster", f"rdzv-test={peer_url}",
            "--max-request-bytes", str(self.max_request_bytes),
            "--logger", "zap",
            "--log-level", "warn",
        ]  # fmt: skip
        if self.enable_v2:
            command.append("--enable-v2")
        if self.cert_file:
            command += ["--cert-file", self.cert_file, "--key-file", str(self.key_file)]
        if self.client_ca_file:
            command += ["--client-cert-auth", "--trusted-ca-file", self.client_ca_file]
        return command + self.extra_args

    def _launch(self) -> None:
        assert self.log_path is not None
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in _terminate
        logger.info("Starting etcd: %s", " ".join(self._command()))
        self._process = subprocess.Popen(
            self._command(),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            self._wait_healthy()
        except BaseException:
            self._terminate(kill=True)
            raise

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        delay = 0.02
        while True:
            assert self._process is not None
            if self._process.poll() is not None:
                raise RuntimeError(f"etcd exited with code {self._process.returncode}: {self._log_tail()}")
            if self._healthy():
                return
            if time.monotonic() + delay > deadline:
                raise RuntimeError(f"etcd was not healthy after {self.startup_timeout} s: {self._log_tail()}")
            time.sleep(delay)
            delay = min(delay * 2, 0.5)

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=1.0, context=self._health_context()) as response:  # noqa: S310 - our own URL
                return json.loads(response.read()).get("health") == "true"
        except (OSError, ValueError, urllib.error.URLError):
            return False

    def _health_context(self) -> ssl.SSLContext | None:
        """TLS for the health probe: our own server on localhost, so no verification; the
        server's client certificate is presented when client certificates are required."""
        if not self.cert_file:
            return None
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        if self.client_ca_file:
            context.load_cert_chain(self.cert_file, self.key_file)
        return context

    def _terminate(self, *, kill: bool = False) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        if self._log is not None:
            self._log.close()
            self._log = None

    def _log_tail(self, limit: int = 2000) -> str:
        try:
            with open(self.log_path or "", "rb") as log:
                log.seek(0, os.SEEK_END)
                log.seek(max(0, log.tell() - limit))
                return log.read().decode("utf-8", "replace").strip()
        except OSError:
            return "(no log)"
