"""The network lab: hosts in Linux network namespaces on a private bridge, with per-link faults.

Layout (``P`` is the lab's prefix, unique per process and lab: ``rdzvlab-<pid>-<hex>``)::

    P-srv   eth0 10.A.B.1/24 ---- tohost [P-lsrv forwarder] tobr ---+
    P-n0    eth0 10.A.B.10/24 --- tohost [P-ln0  forwarder] tobr ---+--- br0 [P-br]
    ...                                                             |
    P-n3    eth0 10.A.B.13/24 --- tohost [P-ln3  forwarder] tobr ---+

Every host, link and the bridge live in namespaces the lab creates; nothing is created in,
routed through or filtered in the root namespace (no host has a default route, the bridge
has no address). Each host's link runs through :mod:`tests.netlab.forwarder` (a userspace
forwarder: this kernel has no ``netem``), controlled per direction with :meth:`Lab.set_link`.

:meth:`Lab.teardown` kills what runs in the lab's namespaces and deletes them;
:func:`sweep_leftovers` deletes labs whose creating process is gone (a crashed run).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import queue
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parents[2]
PREFIX = "rdzvlab-"
CLONE_NEWNET = 0x40000000
SIOCETHTOOL = 0x8946
#: ethtool "set" commands turned off on each host's veth: TX checksum, scatter-gather, TSO,
#: GSO, GRO. A frame copied by the forwarder must be complete: a checksum left for the
#: "hardware" to fill in, or a 64 KB super-frame, would not survive the copy.
_OFFLOADS_OFF = (0x17, 0x19, 0x1F, 0x24, 0x2C)
T = TypeVar("T")


class LabUnavailable(RuntimeError):
    """Network namespaces cannot be used here (the reason is the message)."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
    return result


def lab_available() -> str | None:
    """``None`` when the lab can run here, else why not."""
    if os.geteuid() != 0:
        return "the network lab needs root (network namespaces)"
    if shutil.which("ip") is None:
        return "the network lab needs the 'ip' command (iproute2)"
    probe = f"{PREFIX}{os.getpid()}-probe"
    result = _ip("netns", "add", probe, check=False)
    if result.returncode != 0:
        return f"network namespaces are not allowed here: {result.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return None


def _lab_namespaces() -> dict[str, list[str]]:
    """Namespaces of every lab on this machine, by lab prefix."""
    listing = _ip("netns", "list", check=False).stdout
    labs: dict[str, list[str]] = {}
    for line in listing.splitlines():
        name = line.split()[0] if line.split() else ""
        match = re.match(rf"({PREFIX}(\d+)-[0-9a-z]+)-", name)
        if match:
            labs.setdefault(match.group(1), []).append(name)
    return labs


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _delete_namespaces(names: list[str]) -> None:
    """Kill the processes inside ``names`` (all of them lab processes) and delete them."""
    for name in names:
        for pid in _ip("netns", "pids", name, check=False).stdout.split():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
    for name in names:
        _ip("netns", "del", name, check=False)


def sweep_leftovers() -> list[str]:
    """Delete the namespaces of labs whose creating process no longer runs; their names."""
    swept: list[str] = []
    for prefix, names in _lab_namespaces().items():
        pid = int(prefix[len(PREFIX) :].split("-")[0])
        if not _pid_alive(pid):
            _delete_namespaces(names)
            swept += names
    return swept


def in_netns(namespace: str, fn: Callable[[], T], timeout: float = 60.0) -> T:
    """Run ``fn()`` in a thread that entered network namespace ``namespace`` (``setns``):
    sockets it opens and processes it starts live there. Raises what ``fn`` raised."""
    results: queue.Queue[tuple[bool, Any]] = queue.Queue()

    def run() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(f"/run/netns/{namespace}", os.O_RDONLY)
            try:
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns({namespace}) failed")
            finally:
                os.close(fd)
            results.put((True, fn()))
        except BaseException as exc:
            results.put((False, exc))

    threading.Thread(target=run, daemon=True, name=f"netns-{namespace}").start()
    try:
        ok, value = results.get(timeout=timeout)
    except queue.Empty:
        raise TimeoutError(f"a call in namespace {namespace} took more than {timeout} s") from None
    if not ok:
        raise value
    return value  # type: ignore[no-any-return]


def offloads_off(device: str) -> None:
    """Turn the offloads of :data:`_OFFLOADS_OFF` off on ``device`` of the calling thread's
    namespace (``SIOCETHTOOL``, as ``ethtool -K DEVICE tx off sg off tso off gso off gro off``)."""
    import fcntl
    import socket
    import struct

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for command in _OFFLOADS_OFF:
            value = bytearray(struct.pack("II", command, 0))
            request = struct.pack("16sP", device.encode(), ctypes.addressof(ctypes.c_char.from_buffer(value)))
            fcntl.ioctl(sock.fileno(), SIOCETHTOOL, request)


class Link:
    """A host's link to the bridge: its forwarder process and the faults last set."""

    def __init__(self, namespace: str, seed: int) -> None:
        self.namespace = namespace
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", namespace, sys.executable, "-m", "tests.netlab.forwarder", "tohost", "tobr", str(seed)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        )  # fmt: skip
        self._replies: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self._expect("ready")
        self.faults: dict[str, dict[str, Any]] = {}

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._replies.put(line.strip())
        self._replies.put("")

    def _expect(self, word: str, timeout: float = 15.0) -> None:
        try:
            line = self._replies.get(timeout=timeout)
        except queue.Empty:
            raise RuntimeError(f"the forwarder of {self.namespace} did not answer within {timeout} s") from None
        if line != word:
            err = self.proc.stderr.read() if self.proc.poll() is not None and self.proc.stderr else ""
            raise RuntimeError(f"the forwarder of {self.namespace} answered {line!r} (expected {word!r}): {err}")

    def set(self, up: dict[str, Any] | None = None, down: dict[str, Any] | None = None) -> None:

        spec = {name: value for name, value in (("up", up), ("down", down)) if value is not None}
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(spec) + "\n")
        self.proc.stdin.flush()
        self._expect("ok")
        for name, value in spec.items():
            self.faults.setdefault(name, {}).update(value)

    def stats(self) -> dict[str, dict[str, int]]:
        """Per direction (``up``, ``down``): ``frames`` and ``bytes`` seen, ``dropped``."""

        assert self.proc.stdin is not None
        self.proc.stdin.write('{"stats": true}\n')
        self.proc.stdin.flush()
        try:
            line = self._replies.get(timeout=15)
        except queue.Empty:
            raise RuntimeError(f"the forwarder of {self.namespace} did not answer within 15 s") from None
        return dict(json.loads(line))

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                assert self.proc.stdin is not None
                self.proc.stdin.close()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


#: Faults of a clean link, per direction.
CLEAN = {"delay": 0.0, "jitter": 0.0, "loss": 0.0, "drop": False}


class Lab:
    """A private network: a server host ``srv`` and node hosts ``n0``..``n{nodes-1}``.

    Attributes:
        prefix: The prefix of every namespace of this lab.
        subnet: ``"10.A.B"``; host addresses are :meth:`address`.
        hosts: Host names, server first.
    """

    def __init__(self, nodes: int = 4) -> None:
        self.prefix = f"{PREFIX}{os.getpid()}-{random.getrandbits(24):06x}"
        self.subnet = f"10.{random.randint(64, 250)}.{random.randint(1, 250)}"
        self.hosts = ["srv", *(f"n{i}" for i in range(nodes))]
        self.links: dict[str, Link] = {}
        self._namespaces: list[str] = []

    # -- names ---------------------------------------------------------------------------------

    def ns(self, host: str) -> str:
        """The namespace of ``host``."""
        return f"{self.prefix}-{host}"

    def address(self, host: str) -> str:
        """The IPv4 address of ``host``."""
        return f"{self.subnet}.{1 if host == 'srv' else 10 + int(host[1:])}"

    # -- build and tear down -------------------------------------------------------------------

    def _add_namespace(self, name: str) -> None:
        _ip("netns", "add", name)
        self._namespaces.append(name)
        _ip("-n", name, "link", "set", "lo", "up")
        # No IPv6 anywhere: no autoconfigured addresses, no stray neighbour discovery.
        subprocess.run(
            ["ip", "netns", "exec", name, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1",
             "net.ipv6.conf.default.disable_ipv6=1"],
            check=True, capture_output=True, timeout=30,
        )  # fmt: skip

    def build(self) -> Lab:
        """Create the namespaces, veths, bridge and forwarders (undone by :meth:`teardown`,
        also when this fails half-way)."""
        try:
            bridge = self.ns("br")
            self._add_namespace(bridge)
            _ip("-n", bridge, "link", "add", "br0", "type", "bridge")
            _ip("-n", bridge, "link", "set", "br0", "up")
            for index, host in enumerate(self.hosts):
                host_ns, link_ns = self.ns(host), self.ns(f"l{host}")
                self._add_namespace(host_ns)
                self._add_namespace(link_ns)
                _ip("-n", host_ns, "link", "add", "eth0", "type", "veth", "peer", "name", "tohost", "netns", link_ns)
                port = f"p{host}"
                _ip("-n", link_ns, "link", "add", "tobr", "type", "veth", "peer", "name", port, "netns", bridge)
                _ip("-n", bridge, "link", "set", "dev", port, "master", "br0", "up")
                # One frame per segment: the forwarder passes frames of at most the MTU.
                for ns_, dev in ((host_ns, "eth0"), (link_ns, "tohost"), (link_ns, "tobr")):
                    _ip("-n", ns_, "link", "set", "dev", dev, "gso_max_size", "1500", "gso_max_segs", "1", "up")
                _ip("-n", host_ns, "addr", "add", f"{self.address(host)}/24", "dev", "eth0")
                in_netns(host_ns, lambda: offloads_off("eth0"))
                self.links[host] = Link(link_ns, seed=index)
        except BaseException:
            self.teardown()
            raise
        return self

    def teardown(self) -> None:
        """Stop the forwarders, kill what still runs in the lab, delete its namespaces."""
        for link in self.links.values():
            link.stop()
        self.links.clear()
        _delete_namespaces(list(reversed(self._namespaces)))
        self._namespaces.clear()

    # -- faults --------------------------------------------------------------------------------

    def set_link(self, host: str, *, up: dict[str, Any] | None = None, down: dict[str, Any] | None = None) -> None:
        """Set faults of ``host``'s link (``delay``/``jitter`` s, ``loss`` 0..1, ``drop``) per
        direction: ``up`` from the host to the bridge, ``down`` to the host."""
        self.links[host].set(up=up, down=down)

    def set_both(self, host: str, **faults: Any) -> None:
        """The same ``faults`` both ways on ``host``'s link."""
        self.set_link(host, up=faults, down=faults)

    def heal(self, host: str | None = None) -> None:
        """Clear every fault (of ``host``'s link, or of all)."""
        for name in [host] if host else self.hosts:
            self.set_link(name, up=dict(CLEAN), down=dict(CLEAN))

    @contextlib.contextmanager
    def faults(self, hosts: list[str], **faults: Any) -> Iterator[None]:
        """``faults`` both ways on ``hosts``' links for the ``with`` block, then healed."""
        try:
            for host in hosts:
                self.set_both(host, **faults)
            yield
        finally:
            for host in hosts:
                self.heal(host)

    # -- processes -----------------------------------------------------------------------------

    def popen(self, host: str, argv: list[str], **kwargs: Any) -> subprocess.Popen[str]:
        """Start ``argv`` on ``host`` (``ip netns exec``; the pid is the program's own)."""
        return subprocess.Popen(["ip", "netns", "exec", self.ns(host), *argv], text=True, **kwargs)

    def call(self, host: str, fn: Callable[[], T], timeout: float = 60.0) -> T:
        """``fn()`` run with ``host``'s network (see :func:`in_netns`)."""
        return in_netns(self.ns(host), fn, timeout)
