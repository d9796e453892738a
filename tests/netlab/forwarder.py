"""The per-link fault injector of the network lab: a userspace forwarder of Ethernet frames.

This kernel has no ``netem``, so each host's link to the lab's bridge runs through this
process, in a namespace of its own between two veths: ``python -m tests.netlab.forwarder
HOST_SIDE BRIDGE_SIDE``. It copies every frame from one veth to the other (AF_PACKET raw
sockets), applying per direction (``up``: host to bridge, ``down``: bridge to host):

* ``delay`` seconds +- ``jitter`` (uniform), without reordering (each direction is FIFO);
* ``loss``: the probability (0..1) of dropping a frame;
* ``drop``: drop every frame (a partition, one-way when set on one direction only).

Control: one JSON object per line on stdin, ``{"up": {...}, "down": {...}}`` (missing
directions and keys keep their values); each is answered ``ok`` on stdout once applied.
``{"stats": true}`` is answered with one JSON line: per direction, the ``frames`` and
``bytes`` seen so far (before any fault) and how many were ``dropped``.
End of stdin (the lab, or the test process, went away) stops the forwarder.
"""

from __future__ import annotations

import heapq
import json
import os
import random
import selectors
import socket
import sys
import time
from dataclasses import dataclass, field

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
MAX_FRAME = 65536 + 64


@dataclass
class Direction:
    """Faults of one direction and its queue of frames in flight (``(due, seq, frame)``)."""

    delay: float = 0.0
    jitter: float = 0.0
    loss: float = 0.0
    drop: bool = False
    queue: list[tuple[float, int, bytes]] = field(default_factory=list)
    last_due: float = 0.0
    frames: int = 0
    bytes: int = 0
    dropped: int = 0

    def update(self, spec: dict[str, object]) -> None:
        for key in ("delay", "jitter", "loss"):
            if key in spec:
                value = float(spec[key])  # type: ignore[arg-type]
                if value < 0 or (key == "loss" and value > 1):
                    raise ValueError(f"{key}={value!r}")
                setattr(self, key, value)
        if "drop" in spec:
            self.drop = bool(spec["drop"])

    def admit(self, frame: bytes, now: float, seq: int, rng: random.Random) -> bool:
        """Queue ``frame`` unless a fault drops it; ``True`` when queued."""
        self.frames += 1
        self.bytes += len(frame)
        if self.drop or (self.loss and rng.random() < self.loss):
            self.dropped += 1
            return False
        due = now + max(0.0, self.delay + (rng.uniform(-self.jitter, self.jitter) if self.jitter else 0.0))
        self.last_due = due = max(due, self.last_due)  # FIFO: jitter never reorders
        heapq.heappush(self.queue, (due, seq, frame))
        return True


def _packet_socket(ifname: str) -> socket.socket:
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.bind((ifname, 0))
    sock.setblocking(False)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    return sock


def main(argv: list[str]) -> None:
    host_side, bridge_side = argv[1], argv[2]
    rng = random.Random(int(argv[3]) if len(argv) > 3 else None)
    socks = {"up": _packet_socket(host_side), "down": _packet_socket(bridge_side)}
    # A frame read on the host side goes up (out of the bridge side), and the reverse.
    out = {"up": socks["down"], "down": socks["up"]}
    directions = {"up": Direction(), "down": Direction()}
    selector = selectors.DefaultSelector()
    for name, sock in socks.items():
        selector.register(sock, selectors.EVENT_READ, name)
    selector.register(sys.stdin.fileno(), selectors.EVENT_READ, "control")
    control = b""
    seq = 0
    print("ready", flush=True)
    while True:
        now = time.monotonic()
        dues = [d.queue[0][0] for d in directions.values() if d.queue]
        timeout = max(0.0, min(dues) - now) if dues else None
        for key, _ in selector.select(timeout):
            name = key.data
            if name == "control":
                chunk = os.read(sys.stdin.fileno(), 65536)
                if not chunk:
                    return
                control += chunk
                while b"\n" in control:
                    line, control = control.split(b"\n", 1)
                    command = json.loads(line)
                    if command.get("stats"):
                        counts = {
                            n: {"frames": d.frames, "bytes": d.bytes, "dropped": d.dropped}
                            for n, d in directions.items()
                        }
                        print(json.dumps(counts), flush=True)
                        continue
                    for which, spec in command.items():
                        directions[which].update(spec)
                    print("ok", flush=True)
                continue
            sock = key.fileobj
            for _ in range(64):  # drain a burst, but never starve the other side
                try:
                    frame, address = sock.recvfrom(MAX_FRAME)  # type: ignore[union-attr]
                except BlockingIOError:
                    break
                if address[2] == PACKET_OUTGOING:
                    continue  # our own transmission on this veth
                seq += 1
                directions[name].admit(frame, time.monotonic(), seq, rng)
        now = time.monotonic()
        for name, direction in directions.items():
            while direction.queue and direction.queue[0][0] <= now:
                _, _, frame = heapq.heappop(direction.queue)
                try:
                    out[name].send(frame)
                except OSError:
                    pass  # a full queue or an oversized frame: lost, as on a real link


if __name__ == "__main__":
    main(sys.argv)
