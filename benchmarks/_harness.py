"""Shared machinery of the rdzv benchmarks: servers, counters, node processes.

Not a test and not part of the library. ``rendezvous_scale.py`` and ``store_ops.py`` import
it; it imports the plug-ins and torch lazily so that a missing one only skips its rows.

Servers (each started fresh per measured row, on 127.0.0.1 and a free port):

* ``redis``   -- :class:`rdzv_redis.server.RedisServer` when it exists, else ``redis-server``
  started here (no persistence). Counters: ``INFO commandstats`` and ``INFO stats``.
* ``etcd``    -- :class:`rdzv_etcd.server.EtcdServer` (``enable_v2=True``) when it exists,
  else the ``etcd`` binary started here with ``--enable-v2``. Counters: ``/metrics``.
* ``tcpstore``-- torch's ``TCPStore`` server in a python subprocess of its own, so that its
  ``/proc/<pid>/io`` counts only the store's socket traffic.

Every server also reports ``/proc/<pid>/io`` (``rchar``/``wchar``: bytes through read/write
system calls, i.e. socket traffic, plus disk for etcd's WAL) and its peak RSS (``VmHWM``).
"""

from __future__ import annotations

import json
import os
import platform
import queue as queue_mod
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, "results")
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# ----------------------------------------------------------------------------------------------
# small helpers


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def proc_io(pid: int | None) -> dict[str, int]:
    """``rchar``/``wchar``/``syscr``/``syscw`` of a process (empty when unreadable)."""
    if not pid:
        return {}
    try:
        with open(f"/proc/{pid}/io") as f:
            out = {}
            for line in f:
                key, _, value = line.partition(":")
                out[key.strip()] = int(value)
            return {k: out[k] for k in ("rchar", "wchar", "syscr", "syscw") if k in out}
    except OSError:
        return {}


def proc_cpu_s(pid: int | None) -> float | None:
    """User + system CPU seconds of a process (all its threads), from ``/proc/<pid>/stat``."""
    if not pid:
        return None
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def proc_status_kb(pid: int | None, field: str = "VmHWM") -> int | None:
    if not pid:
        return None
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def machine_description() -> dict[str, Any]:
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem_kb = None
    try:
        with open("/proc/meminfo") as f:
            mem_kb = int(f.readline().split()[1])
    except OSError:
        pass
    versions: dict[str, str | None] = {}
    for exe, args in (("redis-server", ["--version"]), ("etcd", ["--version"])):
        path = shutil.which(exe)
        if path:
            try:
                text = subprocess.run([path, *args], capture_output=True, text=True, timeout=10).stdout
                versions[exe] = text.strip().splitlines()[0] if text.strip() else None
            except (OSError, subprocess.SubprocessError):
                versions[exe] = None
    for mod in ("redis", "etcd3gw", "etcd", "msgspec", "torch"):
        try:
            from importlib.metadata import version

            dist = {"etcd": "python-etcd"}.get(mod, mod)
            versions[dist] = version(dist)
        except Exception:
            versions[{"etcd": "python-etcd"}.get(mod, mod)] = None
    load = os.getloadavg()
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "mem_gib": round(mem_kb / 1024 / 1024, 1) if mem_kb else None,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "versions": versions,
        "loadavg_at_start": [round(x, 2) for x in load],
    }


def git_commit() -> str | None:
    try:
        return (
            subprocess.run(
                ["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10
            ).stdout.strip()
            or None
        )
    except (OSError, subprocess.SubprocessError):
        return None


def write_json(path: str, data: Any) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1, sort_keys=False, default=str)
        f.write("\n")
    os.replace(tmp, path)


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, int(round(q / 100 * (len(ordered) - 1)))))
    return ordered[index]


def fmt_table(headers: list[str], rows: list[list[Any]]) -> str:
    cells = [[("" if c is None else str(c)) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=False))
    sep = "-|-".join("-" * w for w in widths)
    body = [
        " | ".join(c.rjust(w) if _numeric(c) else c.ljust(w) for c, w in zip(r, widths, strict=False)) for r in cells
    ]
    return "\n".join([line, sep, *body])


def _numeric(text: str) -> bool:
    return bool(re.fullmatch(r"[-+]?[0-9.,]+(e[-+]?\d+)?( ?[a-zA-Z%/]+)?", text))


def is_available(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def raise_nofile(want: int = 1 << 20) -> int:
    """Raise this process's soft ``RLIMIT_NOFILE`` towards ``want`` (at most the hard limit) and
    return the new soft limit. With one client per simulated node, a node process holds about
    2-4 sockets per node (pool + pub/sub), i.e. thousands at 1,024 nodes per process; servers
    started afterwards inherit the limit."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


# ----------------------------------------------------------------------------------------------
# servers


class Server:
    kind = "none"
    endpoint = ""
    pid: int | None = None

    def start(self) -> Server:
        return self

    def stop(self) -> None:
        pass

    def counters(self) -> dict[str, Any]:
        """A snapshot of the server's counters (subtract two snapshots with :func:`delta`)."""
        out: dict[str, Any] = {}
        cpu = proc_cpu_s(self.pid)
        if cpu is not None:
            out["cpu_s"] = cpu
        io = proc_io(self.pid)
        if io:
            out["io_rchar"] = io.get("rchar", 0)
            out["io_wchar"] = io.get("wchar", 0)
        return out

    def peak_rss_kb(self) -> int | None:
        return proc_status_kb(self.pid, "VmHWM")

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class NoServer(Server):
    kind = "none"


def _find_pid(server: Any) -> int | None:
    """The pid of a plug-in's server launcher (a :class:`rdzv_core.plugin.LocalServer`)."""
    pid = server.pid
    return pid if isinstance(pid, int) else None


def _stop_popen(proc: subprocess.Popen | None, timeout: float = 10) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


class RedisSrv(Server):
    """A throw-away Redis: the project's ``RedisServer`` if present, else ``redis-server``."""

    kind = "redis"

    def __init__(self) -> None:
        self._impl: Any = None
        self._proc: subprocess.Popen | None = None
        self._dir: str | None = None
        self._client: Any = None
        self._info_sock: socket.socket | None = None
        self._own = {"in": 0, "out": 0, "commands": 0}  # traffic of this harness's INFO calls so far
        self.using = ""
        # One client per simulated node: about 2-4 connections per node (pool + pub/sub). Redis
        # needs maxclients + 32 file descriptors; raise_nofile() in the parent lets it have them.
        self.maxclients = max(1000, raise_nofile() - 64)

    def start(self) -> RedisSrv:
        try:
            from rdzv_redis.server import RedisServer  # type: ignore[import-not-found]
        except ImportError:
            RedisServer = None  # noqa: N806
        if RedisServer is not None:
            impl = RedisServer(extra_args=["--maxclients", str(self.maxclients)])
            started = impl.start() if hasattr(impl, "start") else None
            self._impl = started if isinstance(started, RedisServer) else impl
            self.endpoint = str(self._impl.endpoint)
            self.pid = _find_pid(self._impl)
            self.using = "rdzv_redis.server.RedisServer"
        else:
            port = free_port()
            self._dir = tempfile.mkdtemp(prefix="rdzv-bench-redis-")
            cmd = [
                shutil.which("redis-server") or "redis-server",
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--maxclients",
                str(self.maxclients),
                "--dir",
                self._dir,
                "--loglevel",
                "warning",
            ]
            self._proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            if not wait_port(port, 10):
                raise RuntimeError("redis-server did not start")
            self.endpoint = f"127.0.0.1:{port}"
            self.pid = self._proc.pid
            self.using = "redis-server (harness fallback)"
        host, _, port_text = self.endpoint.rpartition("://")[2].rpartition(":")
        import redis

        self._client = redis.Redis(host=host or "127.0.0.1", port=int(port_text.split("/")[0]))
        if self.pid is None:
            try:
                self.pid = int(self._client.info("server")["process_id"])
            except Exception:
                self.pid = None
        try:  # allow many client connections when the launcher did not
            if int(self._client.config_get("maxclients").get("maxclients", 0)) < self.maxclients:
                self._client.config_set("maxclients", self.maxclients)
        except Exception:
            pass
        try:
            self.maxclients = int(self._client.config_get("maxclients").get("maxclients", 0))
        except Exception:
            pass
        self._host, self._port = host or "127.0.0.1", int(port_text.split("/")[0])
        return self

    def stop(self) -> None:
        if self._info_sock is not None:
            try:
                self._info_sock.close()
            except OSError:
                pass
            self._info_sock = None
        if self._client is not None:
            try:
                self._client.close()
            except Exception:
                pass
        if self._impl is not None:
            for name in ("stop", "close", "__exit__"):
                fn = getattr(self._impl, name, None)
                if fn is not None:
                    fn(None, None, None) if name == "__exit__" else fn()
                    break
        _stop_popen(self._proc)
        if self._dir:
            shutil.rmtree(self._dir, ignore_errors=True)

    _INFO_REQUEST = b"*2\r\n$4\r\nINFO\r\n$3\r\nall\r\n"

    def _raw_info(self) -> tuple[dict[str, str], int]:
        """``INFO all`` over a raw socket of its own: the parsed fields and the exact number of
        bytes of the reply (which Redis counts in ``total_net_output_bytes``)."""
        if self._info_sock is None:
            self._info_sock = socket.create_connection((self._host, self._port), timeout=30)
        sock = self._info_sock
        sock.sendall(self._INFO_REQUEST)
        buf = b""
        while b"\r\n" not in buf:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("redis closed the INFO connection")
            buf += chunk
        header, _, rest = buf.partition(b"\r\n")
        if not header.startswith(b"$"):
            raise RuntimeError(f"unexpected INFO reply {header[:80]!r}")
        size = int(header[1:])
        while len(rest) < size + 2:
            chunk = sock.recv(max(65536, size + 2 - len(rest)))
            if not chunk:
                raise ConnectionError("redis closed the INFO connection")
            rest += chunk
        fields: dict[str, str] = {}
        for line in rest[:size].decode("utf-8", "replace").splitlines():
            key, sep, value = line.partition(":")
            if sep and not line.startswith("#"):
                fields[key] = value
        return fields, len(header) + 2 + size + 2

    def counters(self) -> dict[str, Any]:
        """Server counters without this harness's own INFO traffic.

        ``total_net_input_bytes`` already holds this INFO request; ``total_net_output_bytes``
        and ``total_commands_processed`` hold every earlier INFO (its reply, its command) but
        not this one. All INFO calls go over one raw socket, so their exact bytes are known and
        subtracted: a difference of two snapshots is the traffic of the rendezvous clients only.
        """
        out = super().counters()
        self._own["in"] += len(self._INFO_REQUEST)
        info, reply_bytes = self._raw_info()
        num = lambda key: int(info.get(key, 0) or 0)  # noqa: E731
        out["net_in"] = num("total_net_input_bytes") - self._own["in"]
        out["net_out"] = num("total_net_output_bytes") - self._own["out"]
        out["commands"] = num("total_commands_processed") - self._own["commands"]
        self._own["out"] += reply_bytes
        self._own["commands"] += 1
        out["connections"] = num("total_connections_received")
        out["connected_clients"] = num("connected_clients")
        out["pubsub_clients"] = num("pubsub_clients")
        out["own_info_calls"] = self._own["commands"]
        for key, value in info.items():
            if key.startswith("cmdstat_"):
                calls = re.search(r"calls=(\d+)", value)
                if calls:
                    out["cmd." + key[len("cmdstat_") :]] = int(calls.group(1))
        return out


class RedisClusterSrv(Server):
    """A throw-away local Redis Cluster (``rdzv_redis.server.RedisClusterServer``: 3 masters +
    3 replicas); ``endpoint`` lists every node (use with ``cluster=true``). Its counters are
    the sums over every node (each read like :class:`RedisSrv`'s, minus the harness's own
    INFO traffic); ``cpu_s``, ``io_*`` and peak RSS are summed over the node processes too."""

    kind = "redis"  # the same counters and tables as a single Redis

    def __init__(self) -> None:
        self._impl: Any = None
        self._probes: list[RedisSrv] = []
        self.using = "rdzv_redis.server.RedisClusterServer (3 masters + 3 replicas)"
        self.maxclients = max(1000, raise_nofile() - 64)

    def start(self) -> RedisClusterSrv:
        import redis

        from rdzv_redis.server import RedisClusterServer  # type: ignore[import-not-found]

        self._impl = RedisClusterServer().start()
        self.endpoint = self._impl.endpoint
        self.pid = self._impl.pid
        for node in self._impl.nodes:
            client = redis.Redis(host=node.host, port=node.port)
            try:
                client.config_set("maxclients", self.maxclients)
            finally:
                client.close()
            probe = RedisSrv()
            probe._host, probe._port, probe.pid = node.host, node.port, node.pid
            self._probes.append(probe)
        return self

    def stop(self) -> None:
        for probe in self._probes:
            if probe._info_sock is not None:
                probe._info_sock.close()
        if self._impl is not None:
            self._impl.stop()

    def counters(self) -> dict[str, Any]:
        total: dict[str, Any] = {}
        for probe in self._probes:
            for key, value in probe.counters().items():
                if isinstance(value, (int, float)):
                    total[key] = total.get(key, 0) + value
        return total

    def peak_rss_kb(self) -> int | None:
        sizes = [probe.peak_rss_kb() for probe in self._probes]
        return sum(s for s in sizes if s) or None


_ETCD_METRICS = (
    "grpc_server_handled_total",
    "grpc_server_started_total",
    "grpc_server_msg_received_total",
    "grpc_server_msg_sent_total",
    "etcd_network_client_grpc_received_bytes_total",
    "etcd_network_client_grpc_sent_bytes_total",
    "etcd_debugging_mvcc_put_total",
    "etcd_debugging_mvcc_range_total",
    "etcd_debugging_mvcc_txn_total",
    "etcd_debugging_mvcc_delete_total",
    "etcd_debugging_store_reads_total",
    "etcd_debugging_store_writes_total",
    "etcd_debugging_store_watch_requests_total",
    "etcd_http_received_total",
    "etcd_server_proposals_committed_total",
)


class EtcdSrv(Server):
    """A throw-away etcd with the v2 API on: the project's ``EtcdServer`` if present, else the
    ``etcd`` binary started here."""

    kind = "etcd"

    def __init__(self) -> None:
        self._impl: Any = None
        self._proc: subprocess.Popen | None = None
        self._dir: str | None = None
        self.using = ""
        self.url = ""

    def start(self) -> EtcdSrv:
        try:
            from rdzv_etcd.server import EtcdServer  # type: ignore[import-not-found]
        except ImportError:
            EtcdServer = None  # noqa: N806
        if EtcdServer is not None:
            impl = EtcdServer(enable_v2=True)
            started = impl.start() if hasattr(impl, "start") else None
            self._impl = started if isinstance(started, EtcdServer) else impl
            self.endpoint = str(self._impl.endpoint)
            self.pid = _find_pid(self._impl)
            self.using = "rdzv_etcd.server.EtcdServer(enable_v2=True)"
        else:
            port, peer = free_port(), free_port()
            self._dir = tempfile.mkdtemp(prefix="rdzv-bench-etcd-")
            url = f"http://127.0.0.1:{port}"
            cmd = [
                shutil.which("etcd") or "etcd",
                "--name", "bench", "--data-dir", os.path.join(self._dir, "data"),
                "--listen-client-urls", url, "--advertise-client-urls", url,
                "--listen-peer-urls", f"http://127.0.0.1:{peer}", "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
                "--initial-cluster", f"bench=http://127.0.0.1:{peer}", "--enable-v2=true", "--log-level", "error",
            ]  # fmt: skip
            self._proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            self.endpoint = f"127.0.0.1:{port}"
            self.pid = self._proc.pid
            self.using = "etcd binary (harness fallback)"
        hostport = self.endpoint.rpartition("://")[2].split(",")[0]
        self.url = f"http://{hostport}"
        end = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as resp:
                    if b"true" in resp.read():
                        break
            except OSError:
                pass
            if time.monotonic() > end:
                raise RuntimeError("etcd did not become healthy")
            time.sleep(0.1)
        if self.pid is None:
            self.pid = _pid_listening(int(hostport.rpartition(":")[2]))
        return self

    def stop(self) -> None:
        if self._impl is not None:
            for name in ("stop", "close"):
                fn = getattr(self._impl, name, None)
                if fn is not None:
                    fn()
                    break
        _stop_popen(self._proc)
        if self._dir:
            shutil.rmtree(self._dir, ignore_errors=True)

    def counters(self) -> dict[str, Any]:
        out = super().counters()
        with urllib.request.urlopen(self.url + "/metrics", timeout=10) as resp:
            text = resp.read().decode()
        for line in text.splitlines():
            if not line or line.startswith("#"):
                continue
            name, _, rest = line.partition("{") if "{" in line.split(" ")[0] else (line.split(" ")[0], "", "")
            if name not in _ETCD_METRICS:
                continue
            try:
                value = float(line.rsplit(" ", 1)[1])
            except ValueError:
                continue
            out[name] = out.get(name, 0.0) + value
            if name == "grpc_server_handled_total":
                method = re.search(r'grpc_method="([^"]+)"', line)
                if method:
                    key = "grpc." + method.group(1)
                    out[key] = out.get(key, 0.0) + value
        return out


def _pid_listening(port: int) -> int | None:
    """The pid of the process listening on 127.0.0.1:port (via /proc, best effort)."""
    inode = None
    try:
        with open("/proc/net/tcp") as f:
            next(f)
            for line in f:
                parts = line.split()
                local, state = parts[1], parts[3]
                if state == "0A" and int(local.split(":")[1], 16) == port:
                    inode = parts[9]
                    break
    except OSError:
        return None
    if inode is None:
        return None
    target = f"socket:[{inode}]"
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                    return int(pid)
        except OSError:
            continue
    return None


_TCPSTORE_SERVER = r"""
import sys, time, datetime
from torch.distributed import TCPStore
store = TCPStore("127.0.0.1", int(sys.argv[1]), None, True, datetime.timedelta(seconds=600), wait_for_workers=False)
print("ready", store.port, flush=True)
sys.stdin.read()
"""


class TCPStoreSrv(Server):
    """torch's TCPStore server alone in a subprocess (stdin closed = stop)."""

    kind = "tcpstore"

    def __init__(self) -> None:
        self._proc: subprocess.Popen | None = None
        self.using = "torch.distributed.TCPStore (is_master=True, own process)"

    def start(self) -> TCPStoreSrv:
        port = free_port()
        self._proc = subprocess.Popen(
            [sys.executable, "-c", _TCPSTORE_SERVER, str(port)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        line = self._proc.stdout.readline() if self._proc.stdout else ""
        if not line.startswith("ready"):
            raise RuntimeError(f"TCPStore server did not start: {line!r}")
        self.endpoint = f"127.0.0.1:{port}"
        self.pid = self._proc.pid
        return self

    def stop(self) -> None:
        if self._proc is not None and self._proc.stdin:
            try:
                self._proc.stdin.close()
            except OSError:
                pass
        _stop_popen(self._proc, 5)


def delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    return {
        k: after[k] - before.get(k, 0)
        for k in after
        if isinstance(after[k], (int, float)) and after[k] - before.get(k, 0)
    }


def summarize_server(kind: str, d: dict[str, Any]) -> dict[str, Any]:
    """Turn a counter delta into requests and bytes (client -> server, server -> client)."""
    if kind == "redis":
        return {
            # every command Redis ran, including those run inside Lua scripts (an EVALSHA of a
            # script that calls 5 commands counts 6): the server's work, not round trips
            "requests": d.get("commands", 0),
            "bytes_in": d.get("net_in", 0),
            "bytes_out": d.get("net_out", 0),
            "commands": {
                k[4:]: v - (d.get("own_info_calls", 0) if k == "cmd.info" else 0)
                for k, v in sorted(d.items())
                if k.startswith("cmd.")
            },
            "connections_opened": d.get("connections", 0),
            "source": "redis INFO stats (total_commands_processed, total_net_input/output_bytes) and commandstats, minus the harness's own INFO calls (exact bytes, one raw socket)",
        }
    if kind == "etcd":
        grpc = int(d.get("grpc_server_handled_total", 0))
        v2 = int(d.get("etcd_http_received_total", 0))
        out: dict[str, Any] = {
            "requests": grpc + v2,
            "grpc_requests": grpc,
            "v2_http_requests": v2,
            "bytes_in": int(d.get("etcd_network_client_grpc_received_bytes_total", 0)),
            "bytes_out": int(d.get("etcd_network_client_grpc_sent_bytes_total", 0)),
            "io_rchar": d.get("io_rchar"),
            "io_wchar": d.get("io_wchar"),
            "commands": {k: int(v) for k, v in sorted(d.items()) if k.startswith(("grpc.", "etcd_debugging"))},
            "source": "etcd /metrics (grpc_server_handled_total, etcd_http_received_total, grpc bytes); io_* = /proc/<pid>/io",
        }
        if not out["bytes_in"] and v2:  # v2 HTTP traffic is not in the grpc byte counters
            out["bytes_in"], out["bytes_out"] = d.get("io_rchar", 0), d.get("io_wchar", 0)
            out["source"] += "; v2 bytes from /proc io"
        return out
    if kind == "tcpstore":
        return {
            "requests": None,
            "bytes_in": d.get("io_rchar", 0),
            "bytes_out": d.get("io_wchar", 0),
            "source": "/proc/<pid>/io rchar/wchar of the TCPStore server process",
        }
    return {"requests": None, "bytes_in": None, "bytes_out": None, "source": "in-process"}


# ----------------------------------------------------------------------------------------------
# counting wrapper of a rendezvous backend


class Counters:
    """Per-node counts of backend calls, kept by :class:`CountingBackend`."""

    __slots__ = (
        "get_state", "set_state", "set_failed", "set_none", "wait_calls", "wait_checks", "wakeups",
        "wait_timeouts", "keep_alive", "heartbeat_ages", "forget_node", "other", "bytes_written", "bytes_read",
        "t_backend", "t_wait", "first_set_ok", "last_set_ok", "returned", "max_state_bytes", "extra", "first_call",
    )  # fmt: skip

    def __init__(self) -> None:
        for name in self.__slots__:
            setattr(self, name, 0)
        self.first_set_ok = None
        self.last_set_ok = None
        self.returned = False
        self.extra: dict[str, int] = {}  # calls of other backend methods (join queue, ...)
        self.first_call: dict[str, float] = {}  # method -> time.monotonic() of its first call

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}


COUNT_FIELDS = (
    "get_state",
    "set_state",
    "set_failed",
    "set_none",
    "wait_calls",
    "wait_checks",
    "wakeups",
    "wait_timeouts",
    "keep_alive",
    "heartbeat_ages",
    "forget_node",
    "other",
    "bytes_written",
    "bytes_read",
    "t_backend",
    "t_wait",
)


def make_counting_backend(inner: Any, base: type | None = None, on_first_join: Any = None) -> tuple[Any, Counters]:
    """Wrap ``inner`` so that every backend call is counted.

    Optional capabilities (``wait_for_change``, ``keep_alive``, ...) are forwarded through
    ``__getattr__`` so that ``isinstance(proxy, ChangeNotifier)`` is true exactly when it is
    true of ``inner`` (runtime protocols test attributes with ``hasattr``).
    """
    counters = Counters()
    lock = threading.Lock()

    joined_flag: list[bool] = []

    def _joined() -> None:
        if not joined_flag and on_first_join is not None:
            joined_flag.append(True)
            on_first_join()

    def _timed_call(fn: Any, *args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            counters.t_backend += time.perf_counter() - t0

    class CountingBackend(*((base,) if base else ())):  # type: ignore[misc]
        __slots__ = ()

        @property
        def name(self) -> str:
            return inner.name

        def get_state(self) -> Any:
            counters.get_state += 1
            result = _timed_call(inner.get_state)
            if result is not None:
                counters.bytes_read += len(result[0])
            return result

        def set_state(self, state: bytes, token: Any = None) -> Any:
            counters.set_state += 1
            counters.bytes_written += len(state)
            counters.max_state_bytes = max(counters.max_state_bytes, len(state))
            result = _timed_call(inner.set_state, state, token)
            if result is None:
                counters.set_none += 1
            elif not result[2]:
                counters.set_failed += 1
                counters.bytes_read += len(result[0])
            elif not counters.returned:
                now = time.monotonic()
                if counters.first_set_ok is None:
                    counters.first_set_ok = now
                    _joined()
                counters.last_set_ok = now
            return result

        def close(self) -> None:
            fn = getattr(inner, "close", None)
            if fn is not None:
                fn()

        def __getattr__(self, attr: str) -> Any:
            value = getattr(inner, attr)
            if attr == "wait_for_change" and callable(value):

                def wait_for_change(token: Any, timeout: float) -> bool:
                    t0 = time.perf_counter()
                    changed = value(token, timeout)
                    with lock:
                        if timeout <= 0:
                            counters.wait_checks += 1
                        else:
                            counters.wait_calls += 1
                            counters.t_wait += time.perf_counter() - t0
                            if changed:
                                counters.wakeups += 1
                            else:
                                counters.wait_timeouts += 1
                    return changed

                return wait_for_change
            if attr in ("keep_alive", "heartbeat_ages", "forget_node") and callable(value):

                def counted(*args: Any, **kwargs: Any) -> Any:
                    setattr(counters, attr, getattr(counters, attr) + 1)
                    return _timed_call(value, *args, **kwargs)

                return counted
            if callable(value) and not attr.startswith("_"):

                def other(*args: Any, **kwargs: Any) -> Any:
                    counters.other += 1
                    counters.extra[attr] = counters.extra.get(attr, 0) + 1
                    counters.first_call.setdefault(attr, time.monotonic())
                    result = _timed_call(value, *args, **kwargs)
                    if attr in ("enqueue_join", "join_round"):
                        _joined()  # joined through the queue / the server-side membership
                    return result

                return other
            return value

    if base is not None:
        # an ABC base: the abstract methods above are implemented; nothing else to do
        CountingBackend.__abstractmethods__ = frozenset()  # type: ignore[attr-defined]
    return CountingBackend(), counters


@dataclass
class NodeResult:
    index: int
    rank: int | None
    world_size: int | None
    t_call: float | None
    t_ret: float | None
    error: str | None
    counters: dict[str, Any]


def kill_process_tree(proc: Any, grace: float = 5.0) -> None:
    """Terminate a multiprocessing.Process (then SIGKILL after ``grace``)."""
    if proc.is_alive():
        proc.terminate()
        proc.join(grace)
    if proc.is_alive():
        try:
            os.kill(proc.pid, signal.SIGKILL)
        except OSError:
            pass
        proc.join(5)


# ----------------------------------------------------------------------------------------------
# shared by the benchmark scripts


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def warn_loudly(msg: str) -> None:
    bar = "!" * 100
    text = f"\n{bar}\nWARNING: {msg}\n{bar}\n"
    print(text, flush=True)
    print(text, file=sys.stderr, flush=True)


def make_server(kind: str) -> Server:
    servers = {
        "none": NoServer,
        "redis": RedisSrv,
        "redis-cluster": RedisClusterSrv,
        "etcd": EtcdSrv,
        "tcpstore": TCPStoreSrv,
    }
    return servers[kind]()


def split(indices: list[int], parts: int) -> list[list[int]]:
    parts = max(1, min(parts, len(indices)))
    size, extra = divmod(len(indices), parts)
    out, start = [], 0
    for p in range(parts):
        end = start + size + (1 if p < extra else 0)
        out.append(indices[start:end])
        start = end
    return out


def _get(q: Any, deadline: float) -> tuple[str, int, Any]:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError
    try:
        return q.get(timeout=remaining)
    except queue_mod.Empty:
        raise TimeoutError from None


def await_ready(q: Any, nprocs: int, deadline: float) -> dict[int, dict[str, Any]]:
    """Wait until all ``nprocs`` node processes reported ``ready`` (their payloads by pid).

    Raises:
        RuntimeError: a node process reported an error during setup.
        TimeoutError: not all were ready by ``deadline`` (monotonic s).
    """
    ready: dict[int, dict[str, Any]] = {}
    while len(ready) < nprocs:
        kind, pid, payload = _get(q, deadline)
        if kind == "error":
            raise RuntimeError(f"node process {pid} failed during setup:\n{payload}")
        if kind == "ready":
            ready[pid] = payload
    return ready


def client_sharing(row: dict[str, Any], ready: dict[int, dict[str, Any]], what: str) -> None:
    """Record in ``row`` how the node processes shared clients; warn loudly on a fallback."""
    sharing = sorted({r.get("client_sharing", "?") for r in ready.values()})
    row["client_sharing"] = sharing[0] if len(sharing) == 1 else sharing
    if any("FALLBACK" in m for m in sharing):
        row.setdefault("warnings", []).append("client sharing: " + "; ".join(sharing))
        warn_loudly(f"{what}: " + "; ".join(sharing))
