"""A rendezvous node on a lab host, as an agent drives it, printing a record of every call.

``ip netns exec NS python -m tests.netlab.node SPEC`` (``SPEC``: JSON with ``backend``,
``endpoint``, ``run_id``, ``min_nodes``, ``max_nodes``, ``local_addr``, ``config``). The node
creates its handler, prints ``{"ev": "ready"}`` and waits for ``go`` on stdin; then, like
torchrun's agent, it calls ``next_rendezvous()`` and polls ``num_nodes_waiting()`` every
:data:`POLL_S` seconds, joining the next round when it is above 0. Errors are recorded and
the node goes on (after :data:`POLL_S`), so a test sees what it does once the fault heals.

Each ``next_rendezvous()`` is announced by ``{"ev": "joining", "t0": ...}``; every call
prints one JSON line when it returns: ``ev`` (``round``, ``waiting`` or ``error``), ``call``,
``t0``/``t1`` (``time.monotonic()``, shared by every namespace of the machine) and, for
``round``: ``round`` (the round's store prefix: run, round number and incarnation),
``number``, ``rank``, ``world_size``, ``master`` (``"addr:port"``); for ``waiting``: ``n``
and the ``round`` held; for ``error``: ``type`` (the class, with its module) and ``message``.
The node stops (without leaving or closing) when stdin closes.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from typing import Any

from rdzv_core.api import RendezvousParameters

#: Seconds between two ``num_nodes_waiting()`` calls.
POLL_S = 0.1


def _emit(record: dict[str, Any]) -> None:
    print(json.dumps(record), flush=True)


def _error(call: str, t0: float, exc: BaseException) -> dict[str, Any]:
    kind = type(exc)
    return {
        "ev": "error",
        "call": call,
        "t0": t0,
        "t1": time.monotonic(),
        "type": f"{kind.__module__}.{kind.__qualname__}",
        "message": str(exc)[:500],
    }


def _torch_handler(spec: dict[str, Any]) -> Any:
    """torch's own dynamic rendezvous on a ``TCPStore`` at ``endpoint`` (backend
    ``torch-c10d``; for the latency benchmark)."""
    from datetime import timedelta

    from torch.distributed import TCPStore
    from torch.distributed.elastic.rendezvous.api import RendezvousParameters as TorchParameters
    from torch.distributed.elastic.rendezvous.c10d_rendezvous_backend import C10dRendezvousBackend
    from torch.distributed.elastic.rendezvous.dynamic_rendezvous import create_handler

    host, port = spec["endpoint"].rsplit(":", 1)
    store = TCPStore(host, int(port), is_master=False, timeout=timedelta(seconds=60))
    params = TorchParameters(
        "c10d", spec["endpoint"], spec["run_id"], spec["min_nodes"], spec["max_nodes"], spec["local_addr"],
        **spec["config"],
    )  # fmt: skip
    return create_handler(store, C10dRendezvousBackend(store, spec["run_id"]), params)


def _round_of(handler: Any, info: Any) -> str:
    """The id of the round ``info`` is of: its store prefix (``rdzv.RUN.ROUND[.INCARNATION]``);
    for torch's handler, ``torch.RUN.ROUND`` from the state it holds."""
    prefix = getattr(info.store, "prefix", None)
    if isinstance(prefix, str):
        return prefix
    return f"torch.{handler.get_run_id()}.{handler._state_holder.state.round}"


def main(argv: list[str]) -> None:
    spec = json.loads(argv[1])
    if spec["backend"] == "torch-c10d":
        handler = _torch_handler(spec)
    else:
        from tests.nodeproc import create_node

        params = RendezvousParameters(
            spec["backend"], spec["endpoint"], spec["run_id"], spec["min_nodes"], spec["max_nodes"], spec["local_addr"],
            **spec["config"],
        )  # fmt: skip
        handler = create_node(params).handler
    stopping = threading.Event()

    def watch_stdin() -> None:
        for line in sys.stdin:
            if line.strip() == "go":
                go.set()
        stopping.set()
        go.set()

    go = threading.Event()
    threading.Thread(target=watch_stdin, daemon=True).start()
    _emit({"ev": "ready", "node": str(getattr(handler, "node", "torch"))})
    go.wait()
    held: str | None = None
    while not stopping.is_set():
        t0 = time.monotonic()
        _emit({"ev": "joining", "t0": t0})
        try:
            info = handler.next_rendezvous()
        except Exception as exc:
            _emit(_error("next_rendezvous", t0, exc))
            held = None
            stopping.wait(POLL_S)
            continue
        held = _round_of(handler, info)
        boot = info.bootstrap_store_info
        _emit(
            {
                "ev": "round", "call": "next_rendezvous", "t0": t0, "t1": time.monotonic(), "round": held,
                "number": int(held.split(".")[2]), "rank": info.rank, "world_size": info.world_size,
                "master": f"{boot.master_addr}:{boot.master_port}",
            }
        )  # fmt: skip
        while not stopping.wait(POLL_S):
            t0 = time.monotonic()
            try:
                waiting = handler.num_nodes_waiting()
            except Exception as exc:
                _emit(_error("num_nodes_waiting", t0, exc))
                continue
            _emit(
                {
                    "ev": "waiting",
                    "call": "num_nodes_waiting",
                    "t0": t0,
                    "t1": time.monotonic(),
                    "n": waiting,
                    "round": held,
                }
            )
            if waiting > 0:
                break
    os._exit(0)  # no shutdown(): the node leaves as a killed agent does


if __name__ == "__main__":
    main(sys.argv)
