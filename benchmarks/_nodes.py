"""Node processes of the rendezvous benchmark: N nodes as threads, each with its own handler.

:func:`child_main` runs in a spawned process. It builds one handler per node (each with its
own backend object wrapped in :func:`_harness.make_counting_backend`), reports ``ready``,
waits for the common start signal, runs ``next_rendezvous()`` in one thread per node and
reports each node's rank, timings and backend call counts. It then keeps the nodes alive
(their keep-alive threads run) until told to stop, and reports the counters again.
"""

from __future__ import annotations

import inspect
import itertools
import os
import random
import resource
import threading
import time
import traceback
from datetime import timedelta
from typing import Any

import _harness as H

#: Backends of this repository, and torch's.
RDZV_BACKENDS = ("memory", "redis", "etcd-v3", "etcd-v2")
TORCH_BACKENDS = ("torch-c10d", "torch-etcd-v2")
#: ``sys.setswitchinterval()`` of a node process (s) unless the spec says otherwise. CPython's
#: 0.005 s makes every thread that waits for the GIL wake every 5 ms to ask for it: with ~1,000
#: node threads per process that is ~200,000 futex wake-ups a second, and at 4,096 nodes the
#: node processes burnt 185 s of CPU (vs 14 s at 0.05 s) and no round formed. A real node is a
#: process of its own with a few threads and never pays this; the nodes still share nothing.
DEFAULT_SWITCH_INTERVAL = 0.05
SERVER_OF = {
    "memory": "none",
    "redis": "redis",
    "etcd-v3": "etcd",
    "etcd-v2": "etcd",
    "torch-c10d": "tcpstore",
    "torch-etcd-v2": "etcd",
}


def backend_available(name: str) -> str | None:
    """Return why ``name`` cannot run here, or ``None`` when it can."""
    if name == "memory":
        return None
    if name == "redis":
        if not H.is_available("redis"):
            return "redis-py not installed"
        if not H.is_available("rdzv_redis.backend"):
            return "rdzv_redis.backend not present yet"
        return None
    if name in ("etcd-v3", "etcd-v2"):
        for mod in ("rdzv_etcd.backend", "rdzv_etcd.plugin"):
            if H.is_available(mod):
                return None
        return "rdzv_etcd backend not present yet"
    if name in TORCH_BACKENDS:
        if not H.is_available("torch"):
            return "torch not installed"
        if name == "torch-etcd-v2" and not H.is_available("etcd"):
            return "python-etcd not installed"
        return None
    return f"unknown backend {name!r}"


# ----------------------------------------------------------------------------------------------
# building one node


def _rdzv_params(spec: dict[str, Any]) -> Any:
    from rdzv_core.api import RendezvousParameters

    n = spec["nodes"]
    config = {
        "join_timeout": spec["join_timeout"],
        "last_call_timeout": spec["last_call"],
    }
    if spec.get("keep_alive_interval"):
        config["keep_alive_interval"] = spec["keep_alive_interval"]
    if spec.get("keep_alive_max_attempt"):
        config["keep_alive_max_attempt"] = spec["keep_alive_max_attempt"]
    config.update(spec.get("extra_config") or {})
    return RendezvousParameters(
        spec["backend"],
        spec["endpoint"],
        spec["run_id"],
        spec.get("min_nodes") or n,
        n,
        local_addr="127.0.0.1",
        **config,
    )


def redis_create_accepts_shared() -> bool:
    """Whether ``rdzv_redis.backend.create_backend`` takes ``shared=`` (a private client per
    call with ``shared=False``)."""
    from rdzv_redis.backend import create_backend

    try:
        return "shared" in inspect.signature(create_backend).parameters
    except (TypeError, ValueError):
        return False


#: How the Redis nodes of this process got their clients (reported to the parent).
REDIS_SHARING_FALLBACK = "process (FALLBACK: rdzv_redis.backend.create_backend has no shared= keyword yet; nodes of a process SHARE one client: reads are coalesced across nodes, per-node costs are NOT those of real nodes)"


def _rdzv_backend_and_store(spec: dict[str, Any], params: Any) -> tuple[Any, Any]:
    name = spec["backend"]
    if name == "memory":
        from rdzv_core.memory import shared_store
        from rdzv_core.store_backend import StoreRendezvousBackend

        store = shared_store(params.run_id)
        return StoreRendezvousBackend(store, params.run_id, name="memory"), store
    if name == "redis":
        # One client (pool + pub/sub listener) per simulated node, as on real machines; the
        # library's per-process sharing only with --client-sharing process.
        from rdzv_redis.backend import create_backend

        accepts = redis_create_accepts_shared()
        if spec.get("client_sharing", "node") == "process":
            return create_backend(params, shared=True) if accepts else create_backend(params)
        if accepts:
            return create_backend(params, shared=False)
        return create_backend(params)  # REDIS_SHARING_FALLBACK, reported by child_main
    # etcd-v3 / etcd-v2: whatever factory the plug-in offers
    import importlib

    for mod_name in ("rdzv_etcd.backend", "rdzv_etcd.plugin"):
        try:
            mod = importlib.import_module(mod_name)
        except ImportError:
            continue
        for fn_name in ("create_backend", {"etcd-v3": "create_v3_backend", "etcd-v2": "create_v2_backend"}[name]):
            fn = getattr(mod, fn_name, None)
            if fn is not None:
                return fn(params)
    raise RuntimeError(f"no create_backend for {name}")


def make_rdzv_node(spec: dict[str, Any], on_join: Any) -> tuple[Any, H.Counters, Any]:
    from rdzv_core.dynamic import create_handler

    params = _rdzv_params(spec)
    backend, store = _rdzv_backend_and_store(spec, params)
    counting, counters = H.make_counting_backend(backend, on_first_join=on_join)
    handler = create_handler(store, counting, params)
    return handler, counters, backend


def make_torch_node(spec: dict[str, Any], on_join: Any) -> tuple[Any, H.Counters, Any]:
    from torch.distributed.elastic.rendezvous.dynamic_rendezvous import DynamicRendezvousHandler, RendezvousTimeout
    from torch.distributed.elastic.rendezvous.dynamic_rendezvous import RendezvousBackend as TorchBackend

    run_id, n = spec["run_id"], spec["nodes"]
    host, _, port = spec["endpoint"].rpartition("://")[2].rpartition(":")
    if spec["backend"] == "torch-c10d":
        from torch.distributed import TCPStore
        from torch.distributed.elastic.rendezvous.c10d_rendezvous_backend import C10dRendezvousBackend

        store = TCPStore(
            host, int(port), None, False, timedelta(seconds=spec["join_timeout"] + 60), wait_for_workers=False
        )
        backend = C10dRendezvousBackend(store, run_id)
    else:
        import etcd
        from torch.distributed.elastic.rendezvous.etcd_rendezvous_backend import EtcdRendezvousBackend
        from torch.distributed.elastic.rendezvous.etcd_store import EtcdStore

        client = etcd.Client(host=host, port=int(port), protocol="http", read_timeout=60)
        backend = EtcdRendezvousBackend(client, run_id, key_prefix="/torch/elastic/rendezvous")
        store = EtcdStore(client, "/torch/elastic/store")
    counting, counters = H.make_counting_backend(backend, base=TorchBackend, on_first_join=on_join)
    timeout = RendezvousTimeout(
        join=timedelta(seconds=spec["join_timeout"]), last_call=timedelta(seconds=spec["last_call"])
    )
    kwargs: dict[str, Any] = {}
    if spec.get("keep_alive_interval"):
        kwargs["keep_alive_interval"] = spec["keep_alive_interval"]
    if spec.get("keep_alive_max_attempt"):
        kwargs["keep_alive_max_attempt"] = spec["keep_alive_max_attempt"]
    handler = DynamicRendezvousHandler.from_backend(
        run_id, store, counting, spec.get("min_nodes") or n, n, local_addr="127.0.0.1", timeout=timeout, **kwargs
    )
    return handler, counters, backend


def make_node(spec: dict[str, Any], on_join: Any) -> tuple[Any, H.Counters, Any]:
    if spec["backend"] in TORCH_BACKENDS:
        return make_torch_node(spec, on_join)
    return make_rdzv_node(spec, on_join)


# ----------------------------------------------------------------------------------------------
# client-side request counting (benchmark-only monkeypatches of the client libraries)

_requests = itertools.count()
#: Requests sent by the current thread (``_tls.n``): a node's ``next_rendezvous()`` runs in
#: its own thread, so the difference around the call is what that node sent on its path.
_tls = threading.local()


def thread_requests() -> int:
    return int(getattr(_tls, "n", 0))


def install_request_counter(backend: str) -> str | None:
    """Count requests this process sends, in all and per thread: redis-py
    ``send_packed_command`` (a pipeline is one), urllib3 ``urlopen`` (python-etcd, etcd3gw).
    Returns what is counted, or ``None``."""
    if backend == "redis":
        from redis.connection import AbstractConnection

        original = AbstractConnection.send_packed_command

        def send_packed_command(self: Any, *args: Any, **kwargs: Any) -> Any:
            next(_requests)
            _tls.n = getattr(_tls, "n", 0) + 1
            return original(self, *args, **kwargs)

        AbstractConnection.send_packed_command = send_packed_command  # type: ignore[method-assign]
        return "redis-py send_packed_command calls"
    if backend in ("etcd-v3", "etcd-v2", "torch-etcd-v2"):
        from urllib3.connectionpool import HTTPConnectionPool

        original_urlopen = HTTPConnectionPool.urlopen

        def urlopen(self: Any, *args: Any, **kwargs: Any) -> Any:
            next(_requests)
            _tls.n = getattr(_tls, "n", 0) + 1
            return original_urlopen(self, *args, **kwargs)

        HTTPConnectionPool.urlopen = urlopen  # type: ignore[method-assign]
        return "urllib3 urlopen calls"
    return None


def count_client_requests(backend: Any) -> list[int] | None:
    """Count the requests of one node's own Redis client: every ``execute_command`` of its
    ``redis.Redis`` object (a script call is one ``EVALSHA``) and every pipeline
    ``execute``, from any thread of that node. Only meaningful with a private client (the
    box counts all users of the client). ``None`` when the backend has no such client."""
    client = getattr(backend, "_client", None)
    r = getattr(client, "redis", None)
    if r is None or not hasattr(r, "execute_command"):
        return None
    box = [0]
    original = r.execute_command
    original_pipeline = r.pipeline

    def execute_command(*args: Any, **kwargs: Any) -> Any:
        box[0] += 1
        return original(*args, **kwargs)

    def pipeline(*args: Any, **kwargs: Any) -> Any:
        pipe = original_pipeline(*args, **kwargs)
        original_execute = pipe.execute

        def execute(*a: Any, **k: Any) -> Any:
            box[0] += 1
            return original_execute(*a, **k)

        pipe.execute = execute
        return pipe

    r.execute_command = execute_command
    r.pipeline = pipeline
    return box


def round_of(handler: Any) -> Any:
    """The round a handler's node last joined (private attributes; benchmark-only):
    ``(incarnation, round)`` for rdzv, ``round`` for torch."""
    joined_at = getattr(handler, "_joined_at", None)
    if joined_at is not None:
        return list(joined_at)
    joined = getattr(handler, "_joined_round", None)
    if joined is not None:
        return joined
    holder = getattr(handler, "_state_holder", None)  # torch
    if holder is not None:
        return holder.state.round
    return None


def requests_sent() -> int:
    return int(repr(_requests)[6:-1])


# ----------------------------------------------------------------------------------------------
# benchmark-only experiments: monkeypatches that model a proposed change of rdzv_core, so that
# its effect can be measured before anyone edits the library


def _delay_first_beat() -> None:
    """The keep-alive thread waits a jittered 0.5-1 interval before its first tick, instead of
    beating and sweeping for dead nodes at once when the round completes."""
    import random

    from rdzv_core.dynamic import DynamicRendezvousHandler, logger

    def _heartbeat_loop(self: Any, stop: Any) -> None:
        while not stop.wait(self._settings.interval_s * random.uniform(0.5, 1.0)):
            try:
                self._keep_alive_tick()
            except Exception as exc:
                logger.warning("keep-alive failed: %s", exc)

    DynamicRendezvousHandler._heartbeat_loop = _heartbeat_loop  # type: ignore[method-assign]


EXPERIMENTS = {"delay-first-beat": _delay_first_beat}


def client_sharing_of(spec: dict[str, Any]) -> str:
    """How the nodes of ``spec`` get their clients: ``node`` (a private client each),
    ``process`` (requested sharing) or :data:`REDIS_SHARING_FALLBACK`."""
    if spec["backend"] == "redis":
        if spec.get("client_sharing", "node") == "process":
            return "process"
        return "node" if redis_create_accepts_shared() else REDIS_SHARING_FALLBACK
    if spec["backend"] in ("etcd-v3", "etcd-v2"):
        return "node"  # rdzv_etcd.backend.create_backend builds a new EtcdKV (own pool) per call
    if spec["backend"] in TORCH_BACKENDS:
        return "node"  # a TCPStore client / etcd.Client per node, built here
    return "process"  # memory: one in-process store


def build_nodes(
    spec: dict[str, Any], count: int, on_join: Any
) -> tuple[list[tuple[Any, H.Counters, Any]], list[list[int] | None], str]:
    """``count`` nodes of ``spec``, each with its own handler and backend; the request counter
    of each node's own Redis client (``None`` where there is none or it is shared); and the
    client sharing mode."""
    sharing = client_sharing_of(spec)
    nodes = [make_node(spec, on_join) for _ in range(count)]
    private_redis = spec["backend"] == "redis" and sharing == "node"
    boxes = [count_client_requests(b) if private_redis else None for _, _, b in nodes]
    return nodes, boxes, sharing


# ----------------------------------------------------------------------------------------------
# the node process


def _hwm_kb() -> int:
    """Peak RSS of this process since exec (``VmHWM``; ``ru_maxrss`` would include the RSS
    of the parent inherited through fork before exec)."""
    return H.proc_status_kb(os.getpid(), "VmHWM") or 0


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _rss_kb() -> int:
    return H.proc_status_kb(os.getpid(), "VmRSS") or 0


def _setup_process(spec: dict[str, Any]) -> int:
    """Small thread stacks, a raised open-files limit (returned) and the switch interval."""
    import sys

    threading.stack_size(512 * 1024)
    sys.setswitchinterval(spec.get("switch_interval") or DEFAULT_SWITCH_INTERVAL)
    return H.raise_nofile()


def child_main(
    spec: dict[str, Any],
    indices: list[int],
    queue: Any,
    go: Any,
    abort: Any,
    stop: Any,
    last_go: Any,
    joined: Any,
    slot: int = 0,
    reqs: Any = None,
) -> None:
    """Entry point of one node process (see the module docs)."""
    pid = os.getpid()
    try:
        import logging

        logging.basicConfig(level=logging.ERROR)
        if spec.get("log_dir"):  # the nodes' rendezvous events, one file per process
            trace = logging.FileHandler(os.path.join(spec["log_dir"], f"node-proc-{pid}.log"))
            trace.setFormatter(logging.Formatter("%(created).3f %(threadName)s %(levelname)s %(message)s"))
            logging.getLogger("rdzv_core").addHandler(trace)
            logging.getLogger("rdzv_core").setLevel(logging.INFO)
        nofile = _setup_process(spec)
        os.environ.setdefault("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "0")
        held_back = spec.get("held_back")  # index of a node that joins only on last_go
        join_lock = threading.Lock()

        def on_join() -> None:
            with join_lock:
                with joined.get_lock():
                    joined.value += 1

        # import the modules before measuring the base RSS
        if spec["backend"] in TORCH_BACKENDS:
            import torch.distributed.elastic.rendezvous.dynamic_rendezvous  # noqa: F401
        else:
            import rdzv_core.dynamic  # noqa: F401
        for name in spec.get("experiments") or ():
            EXPERIMENTS[name]()
        counted = install_request_counter(spec["backend"])
        if counted and reqs is not None:

            def publish() -> None:
                while True:
                    reqs[slot] = requests_sent()
                    time.sleep(0.02)

            threading.Thread(target=publish, daemon=True, name="bench-requests").start()
        rss_base = _rss_kb()
        t0 = time.monotonic()
        nodes, boxes, sharing = build_nodes(spec, len(indices), on_join)
        setup_s = time.monotonic() - t0
        local_go = threading.Event()
        results: list[Any] = [None] * len(nodes)
        per_call: list[dict[str, Any]] = [{} for _ in nodes]

        def run(k: int) -> None:
            handler, counters, _ = nodes[k]
            box = boxes[k]
            local_go.wait()
            if indices[k] == held_back:
                last_go.wait()
            t_call = time.monotonic()
            thread0, client0 = thread_requests(), (box[0] if box else None)
            rank = world = err = None
            try:
                info = handler.next_rendezvous()
                rank, world = info.rank, info.world_size
            except BaseException as exc:  # report, never hang the process
                err = f"{type(exc).__name__}: {exc}"[:500]
            t_ret = time.monotonic()
            counters.returned = True
            per_call[k] = {
                "rt_thread": thread_requests() - thread0 if counted else None,
                "rt_client": None if box is None else box[0] - client0,
            }
            results[k] = (indices[k], rank, world, t_call, t_ret, err)

        threads = [
            threading.Thread(target=run, args=(k,), daemon=True, name=f"node-{indices[k]}") for k in range(len(nodes))
        ]
        for t in threads:
            t.start()
        queue.put(
            (
                "ready",
                pid,
                {
                    "setup_s": setup_s,
                    "rss_base_kb": rss_base,
                    "rss_ready_kb": _rss_kb(),
                    "threads": threading.active_count(),
                    "client_sharing": sharing,
                    "nofile": nofile,
                },
            )
        )
        go.wait()
        cpu0 = _cpu_s()
        local_go.set()
        for t in threads:
            while t.is_alive() and not abort.is_set():
                t.join(0.05)
            if abort.is_set():
                break
        rows = []
        for k, r in enumerate(results):
            if r is None:
                r = (indices[k], None, None, None, None, "did not return")
            rows.append((*r, {**nodes[k][1].as_dict(), **per_call[k]}))
        queue.put(
            (
                "done",
                pid,
                {
                    "rows": rows,
                    "maxrss_kb": _hwm_kb(),
                    "rss_kb": _rss_kb(),
                    "threads": threading.active_count(),
                    "cpu_s": _cpu_s() - cpu0,
                },
            )
        )
        stop.wait()
        counts = [n[1].as_dict() for n in nodes]
        queue.put(("final", pid, {"counters": counts, "maxrss_kb": _hwm_kb()}))
    except BaseException:
        queue.put(("error", pid, traceback.format_exc()[-3000:]))
    finally:
        try:
            queue.close()
            queue.join_thread()  # flush what was put before leaving
        except Exception:
            pass
        os._exit(0)  # no clean-up of thousands of handlers: the server is thrown away


# ----------------------------------------------------------------------------------------------
# the mass-failure node process


def mass_child_main(spec: dict[str, Any], indices: list[int], queue: Any, go: Any, stop: Any, failed: Any) -> None:
    """One node process of the mass-failure benchmark (the parent may SIGKILL it).

    Every node joins once (generation 0), then acts as an agent: every 0.1-0.5 s (uniform) it
    polls ``num_nodes_waiting()`` and, when it is > 0, calls ``next_rendezvous()`` again. With
    ``spec["failure_signal"]`` (torch, whose ``num_nodes_waiting()`` counts only the wait
    list) a node also re-joins once the parent set ``failed`` (its workers' collective failed).
    ``stop`` and ``failed`` are shared ints (``RawValue``), polled: a multiprocessing Event
    would hang the parent's ``set()`` for ever once a process with threads waiting on it was
    SIGKILLed (its Condition waits for the dead sleepers to acknowledge).
    Reports ``("rank", pid, (index, gen, round, rank, world, t_call, t_ret))`` per return and
    ``("nerror", pid, (index, gen, text, t))`` per failure (in calls or polls).
    """
    pid = os.getpid()
    try:
        import logging

        logging.basicConfig(level=logging.CRITICAL)
        nofile = _setup_process(spec)
        if spec["backend"] in TORCH_BACKENDS:
            import torch.distributed.elastic.rendezvous.dynamic_rendezvous  # noqa: F401
        else:
            import rdzv_core.dynamic  # noqa: F401
        t0 = time.monotonic()
        nodes, _, sharing = build_nodes(spec, len(indices), None)
        setup_s = time.monotonic() - t0
        local_go = threading.Event()
        signal_mode = bool(spec.get("failure_signal"))
        poll_lo, poll_hi = spec.get("poll_s", (0.1, 0.5))

        def join(k: int, gen: int) -> bool:
            handler = nodes[k][0]
            t_call = time.monotonic()
            try:
                info = handler.next_rendezvous()
            except BaseException as exc:
                queue.put(("nerror", pid, (indices[k], gen, f"{type(exc).__name__}: {exc}"[:300], time.monotonic())))
                return False
            t_ret = time.monotonic()
            queue.put(("rank", pid, (indices[k], gen, round_of(handler), info.rank, info.world_size, t_call, t_ret)))
            return True

        def agent(k: int) -> None:
            handler = nodes[k][0]
            local_go.wait()
            gen = 0
            if not join(k, gen):
                return
            rng = random.Random(indices[k])
            signalled = False
            while True:
                time.sleep(rng.uniform(poll_lo, poll_hi))
                if stop.value:
                    break
                try:
                    waiting = handler.num_nodes_waiting()
                except BaseException as exc:
                    queue.put(
                        (
                            "nerror",
                            pid,
                            (
                                indices[k],
                                gen,
                                f"num_nodes_waiting: {type(exc).__name__}: {exc}"[:300],
                                time.monotonic(),
                            ),
                        )
                    )
                    continue
                trigger = waiting > 0
                if signal_mode and not signalled and failed.value:
                    trigger = signalled = True
                if trigger:
                    gen += 1
                    join(k, gen)

        threads = [
            threading.Thread(target=agent, args=(k,), daemon=True, name=f"node-{indices[k]}") for k in range(len(nodes))
        ]
        for t in threads:
            t.start()
        queue.put(("ready", pid, {"setup_s": setup_s, "client_sharing": sharing, "nofile": nofile}))
        go.wait()
        local_go.set()
        while not stop.value:
            time.sleep(0.2)
    except BaseException:
        queue.put(("error", pid, traceback.format_exc()[-3000:]))
    finally:
        try:
            queue.close()
            queue.join_thread()
        except Exception:
            pass
        os._exit(0)
