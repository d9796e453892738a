#!/usr/bin/env python
"""How long N nodes need to form one rendezvous round, per backend, side by side with torch.

    python benchmarks/rendezvous_scale.py --backends redis,etcd-v3,etcd-v2,torch-c10d,torch-etcd-v2 \\
        --nodes 8,64,256,1024,4096 --procs 4

N nodes are threads spread over P spawned processes; every node has its own handler and its
own backend object (wrapped to count calls). All nodes start behind one barrier and call
``next_rendezvous()`` once with ``min_nodes = max_nodes = N`` (last call 1 s, irrelevant once
max is reached; keep-alive interval: the library default). Each backend/N row gets a fresh
server on 127.0.0.1 (Redis: RedisServer; etcd: EtcdServer(enable_v2=True); torch-c10d:
a TCPStore server in its own process; torch-etcd-v2: torch's EtcdRendezvousBackend over
python-etcd on the same etcd).

Per row: seconds until every node holds its rank; the completing write and the tail after
it; latency from the last join call to the last return; backend calls per node (from the
wrapper: get_state, set_state, failed compare-and-sets, wait_for_change wake-ups, ...);
server requests and bytes per node (Redis INFO, etcd /metrics, /proc io of TCPStore);
peak RSS of the node processes and the server. Ranks are checked: exactly 0..N-1, world
size N everywhere. A row that exceeds ``--timeout`` is "did not finish" (DNF); its
processes are killed and larger N of that backend are skipped (``--keep-going`` runs them).

Extra sections: ``last_join`` (N-1 nodes wait, then the last one joins: latency from its call
until all N hold ranks), ``idle`` (keep-alive traffic per node and interval in a completed
round), ``state`` (encoded state bytes per node, decode time of an N-node state).

Output: tables on stdout, JSON in ``benchmarks/results/rendezvous_scale.json``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import time
import uuid
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _harness as H  # noqa: E402
import _nodes as N  # noqa: E402
from _harness import _get, log, make_server, split, warn_loudly  # noqa: E402,F401

ALL_BACKENDS = ("redis", "etcd-v3", "etcd-v2", "torch-c10d", "torch-etcd-v2")


def run_round(
    backend: str,
    n: int,
    procs: int,
    timeout: float,
    *,
    last_call: float = 1.0,
    keep_alive_interval: float | None = None,
    last_join: bool = False,
    idle_intervals: int = 0,
    client_sharing: str = "node",
    settle: float = 1.0,
    pyspy_dir: str | None = None,
    switch_interval: float | None = None,
    experiments: list[str] | None = None,
    redis_cluster: bool = False,
) -> dict[str, Any]:
    """Run one round of ``n`` nodes of ``backend`` in ``procs`` processes; return a row.
    ``redis_cluster``: the ``redis`` backend on a local Redis Cluster (``cluster=true``; the
    row's backend is ``redis-cluster``)."""
    row: dict[str, Any] = {
        "backend": "redis-cluster" if redis_cluster else backend,
        "nodes": n,
        "mode": "last_join" if last_join else "burst",
        "status": "ok",
        "loadavg_before": [round(x, 2) for x in os.getloadavg()],
    }
    server = make_server("redis-cluster" if redis_cluster else N.SERVER_OF[backend])
    ctx = mp.get_context("spawn")
    children: list[Any] = []
    try:
        server.start()
        row["server"] = getattr(server, "using", server.kind)
        nprocs = 1 if backend == "memory" else max(1, min(procs, n))
        row["procs"] = nprocs
        spec = {
            "backend": backend,
            "endpoint": server.endpoint,
            "run_id": "bench-" + uuid.uuid4().hex[:8],
            "nodes": n,
            "join_timeout": float(max(timeout, 30)),
            "last_call": last_call,
            "keep_alive_interval": keep_alive_interval,
            "held_back": n - 1 if last_join else None,
            "client_sharing": client_sharing,
            "switch_interval": switch_interval or N.DEFAULT_SWITCH_INTERVAL,
            "experiments": experiments or [],
            "log_dir": os.environ.get("RDZV_BENCH_LOG_DIR"),
            "extra_config": {"cluster": "true"} if redis_cluster else {},
        }
        row["switch_interval_s"] = spec["switch_interval"]
        if experiments:
            row["experiments"] = experiments
        q = ctx.Queue()
        go, abort, stop, last_go = ctx.Event(), ctx.Event(), ctx.Event(), ctx.Event()
        joined = ctx.Value("i", 0)
        reqs = ctx.Array("q", nprocs, lock=False)  # requests sent, per node process
        for slot, part in enumerate(split(list(range(n)), nprocs)):
            p = ctx.Process(
                target=N.child_main, args=(spec, part, q, go, abort, stop, last_go, joined, slot, reqs), daemon=True
            )
            p.start()
            children.append(p)
        ready = H.await_ready(q, nprocs, time.monotonic() + max(120.0, timeout))
        row["setup_s"] = round(max(r["setup_s"] for r in ready.values()), 3)
        H.client_sharing(row, ready, f"{backend} N={n}")
        if server.kind == "redis":
            row["redis_maxclients"] = getattr(server, "maxclients", None)
        spies = _start_pyspy(pyspy_dir, backend, n, list(ready)) if pyspy_dir else []
        time.sleep(0.05)
        before, reqs_before = server.counters(), sum(reqs)
        t_go = time.monotonic()
        go.set()
        t_release = None
        deadline = t_go + timeout
        if last_join:
            while joined.value < n - 1 and time.monotonic() < deadline:
                time.sleep(0.005)
            if joined.value >= n - 1:
                time.sleep(settle)  # let the N-1 nodes park in their wait
                t_release = time.monotonic()
                last_go.set()
        done: dict[int, dict[str, Any]] = {}
        while len(done) < nprocs:
            try:
                kind, pid, payload = _get(q, deadline)
            except TimeoutError:
                row["status"] = "dnf"
                row["stuck_threads"] = _dump_stacks([pid for pid in ready if pid not in done])
                abort.set()
                grace = time.monotonic() + 30
                while len(done) < nprocs:
                    try:
                        kind, pid, payload = _get(q, grace)
                    except TimeoutError:
                        break
                    if kind == "done":
                        done[pid] = payload
                break
            if kind == "error":
                raise RuntimeError(f"node process {pid} failed:\n{payload}")
            if kind == "done":
                done[pid] = payload
        time.sleep(0.05)
        after, reqs_after = server.counters(), sum(reqs)
        if spies:
            row["profile"] = _stop_pyspy(spies)
        rows = [r for d in done.values() for r in d["rows"]]
        row["cpu"] = {
            "node_procs_s": round(sum(d.get("cpu_s", 0) for d in done.values()), 2),
            "server_s": round(after["cpu_s"] - before["cpu_s"], 2) if "cpu_s" in after and "cpu_s" in before else None,
        }
        _summarize(row, rows, n, t_go, t_release, timeout)
        if server.kind == "redis" and "connected_clients" in after:
            row["redis_connected_clients"] = after["connected_clients"]
        srv = H.summarize_server(server.kind, H.delta(before, after))
        row["server_counters"] = srv
        if srv.get("requests") is not None:
            row["server_requests_per_node"] = round(srv["requests"] / n, 2)
        if backend not in ("memory", "torch-c10d"):
            row["requests_per_node"] = round((reqs_after - reqs_before) / n, 2)
            row["requests_source"] = (
                "client side: "
                + ("redis-py send_packed_command" if backend == "redis" else "urllib3 urlopen")
                + " calls"
            )
        elif backend == "torch-c10d":
            ops = row["backend_calls_per_node"]
            row["requests_per_node"] = round(ops["get_state"] + ops["set_state"] + 2, 2)
            row["requests_source"] = (
                "estimate: get_state + set_state + 2 store calls for MASTER_ADDR/PORT (TCPStore has no counters)"
            )
        if srv.get("bytes_in") is not None:
            row["bytes_in_per_node"] = round((srv["bytes_in"] or 0) / n)
            row["bytes_out_per_node"] = round((srv["bytes_out"] or 0) / n)
        row["server_cost_window"] = (
            "barrier release -> every node process reported all its nodes returned (rank + MASTER_ADDR/PORT) + 50 ms"
        )
        if idle_intervals and row["status"] == "ok" and server.kind != "none":
            interval = keep_alive_interval or 5.0
            time.sleep(interval + 1.0)  # every keep-alive thread has started beating
            a, ra, ta = server.counters(), sum(reqs), time.monotonic()
            time.sleep(interval * idle_intervals)
            b, rb, tb = server.counters(), sum(reqs), time.monotonic()
            d = H.summarize_server(server.kind, H.delta(a, b))
            per = n * (tb - ta) / interval
            row["idle"] = {
                "interval_s": interval,
                "window_s": round(tb - ta, 2),
                "requests_per_node_per_interval": None
                if backend in ("memory", "torch-c10d")
                else round((rb - ra) / per, 2),
                "server_requests_per_node_per_interval": None
                if d.get("requests") is None
                else round(d["requests"] / per, 2),
                "bytes_in_per_node_per_interval": None
                if d.get("bytes_in") is None
                else round((d["bytes_in"] or 0) / per, 1),
                "bytes_out_per_node_per_interval": None
                if d.get("bytes_out") is None
                else round((d["bytes_out"] or 0) / per, 1),
                "server": d,
            }
        stop.set()
        finals: dict[int, dict[str, Any]] = {}
        end = time.monotonic() + 20
        while len(finals) < len(done):
            try:
                kind, pid, payload = _get(q, end)
            except TimeoutError:
                break
            if kind == "final":
                finals[pid] = payload
        maxrss = [f["maxrss_kb"] for f in finals.values()] or [d["maxrss_kb"] for d in done.values()]
        base = sum(r["rss_base_kb"] for r in ready.values())
        row["rss"] = {
            "node_proc_max_mb": round(max(maxrss) / 1024, 1) if maxrss else None,
            "node_procs_sum_mb": round(sum(maxrss) / 1024, 1) if maxrss else None,
            "kb_per_node": round((sum(maxrss) - base) / n, 1) if maxrss else None,
            "server_peak_mb": None if server.peak_rss_kb() is None else round(server.peak_rss_kb() / 1024, 1),
        }
        if row.get("idle") and finals:
            row["idle"]["keep_alive_calls_per_node"] = round(
                sum(c["keep_alive"] for f in finals.values() for c in f["counters"]) / n, 2
            )
    except Exception as exc:
        row["status"] = "error"
        row["error"] = f"{type(exc).__name__}: {exc}"[-2000:]
    finally:
        for p in children:
            H.kill_process_tree(p, grace=3)
        try:
            server.stop()
        except Exception as exc:
            row.setdefault("warnings", []).append(f"server stop: {exc}")
    return row


def _start_pyspy(out_dir: str, backend: str, n: int, pids: list[int]) -> list[tuple[Any, str]]:
    """Sample every node process with py-spy (CPU only: idle threads are not recorded)."""
    import shutil
    import subprocess

    exe = shutil.which("py-spy")
    if not exe:
        log("py-spy not found: pip install py-spy")
        return []
    os.makedirs(out_dir, exist_ok=True)
    spies = []
    for pid in pids:
        path = os.path.join(out_dir, f"{backend}-{n}-{pid}.txt")
        proc = subprocess.Popen(
            [
                exe,
                "record",
                "--pid",
                str(pid),
                "--rate",
                "200",
                "--gil",
                "--format",
                "raw",
                "--output",
                path,
                "--nonblocking",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        spies.append((proc, path))
    time.sleep(1.0)  # py-spy attaches
    return spies


def _stop_pyspy(spies: list[tuple[Any, str]]) -> dict[str, Any]:
    """Stop the samplers and summarise: share of samples per (file:function), self and total."""
    import signal as sig

    for proc, _ in spies:
        proc.send_signal(sig.SIGINT)
    for proc, _ in spies:
        try:
            proc.wait(30)
        except Exception:
            proc.kill()
    return profile_summary([path for _, path in spies])


def profile_summary(paths: list[str], top: int = 25) -> dict[str, Any]:
    self_counts: dict[str, int] = {}
    total_counts: dict[str, int] = {}
    samples = 0
    for path in paths:
        try:
            lines = open(path).read().splitlines()
        except OSError:
            continue
        for line in lines:
            stack, _, count_text = line.rpartition(" ")
            if not stack or not count_text.isdigit():
                continue
            count = int(count_text)
            samples += count
            frames = [_frame_name(f) for f in stack.split(";")]
            frames = [f for f in frames if f and not f.startswith("process ")]
            if frames:
                self_counts[frames[-1]] = self_counts.get(frames[-1], 0) + count
            for f in set(frames):
                total_counts[f] = total_counts.get(f, 0) + count

    def top_of(counts: dict[str, int]) -> list[tuple[str, float]]:
        return [(k, round(100 * v / samples, 1)) for k, v in sorted(counts.items(), key=lambda kv: -kv[1])[:top]]

    return {"samples": samples, "files": paths, "self_pct": top_of(self_counts), "total_pct": top_of(total_counts)}


def _frame_name(frame: str) -> str:
    # py-spy raw frames look like "function (path/to/file.py:123)"
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    file = where.rpartition(":")[0]
    for marker in ("site-packages/", "/work/main/"):
        if marker in file:
            file = file.split(marker, 1)[1]
    return f"{name} [{file}]" if file else name


def _dump_stacks(pids: list[int]) -> dict[str, Any] | None:
    """Where the node threads of a did-not-finish row are: ``py-spy dump`` of each process,
    counted by the innermost frame of rdzv code (and the innermost frame overall)."""
    import shutil
    import subprocess

    exe = shutil.which("py-spy")
    if not exe or not pids:
        return None
    project: dict[str, int] = {}
    innermost: dict[str, int] = {}
    threads = 0
    for pid in pids:
        try:
            text = subprocess.run(
                [exe, "dump", "--json", "--pid", str(pid)], capture_output=True, text=True, timeout=120
            ).stdout
            dump = json.loads(text)
        except (OSError, subprocess.SubprocessError, ValueError):
            continue
        for thread in dump:
            if not str(thread.get("thread_name") or "").startswith("node-"):
                continue
            threads += 1
            frames = [f"{f['name']} ({f['short_filename']}:{f['line']})" for f in thread.get("frames", [])]
            if frames:
                innermost[frames[0]] = innermost.get(frames[0], 0) + 1
            mine = next(
                (f for f, raw in zip(frames, thread["frames"], strict=False) if "rdzv_" in raw["filename"]), None
            )
            if mine:
                project[mine] = project.get(mine, 0) + 1
    top = lambda d: sorted(d.items(), key=lambda kv: -kv[1])[:12]  # noqa: E731
    return {"node_threads": threads, "innermost_rdzv_frame": top(project), "innermost_frame": top(innermost)}


def _summarize(
    row: dict[str, Any], rows: list[tuple], n: int, t_go: float, t_release: float | None, timeout: float
) -> None:
    finished = [r for r in rows if r[1] is not None]
    errors = sorted({r[5] for r in rows if r[5] and r[5] != "did not return"})
    row["finished"] = len(finished)
    if errors:
        row["errors"] = errors[:5]
    ranks = sorted(r[1] for r in finished)
    worlds = {r[2] for r in finished}
    row["ranks_ok"] = len(finished) == n and ranks == list(range(n)) and worlds == {n}
    if row["status"] == "ok" and not row["ranks_ok"]:
        row["status"] = "error" if errors else "bad_ranks"
    if row["status"] == "dnf":
        row["seconds"] = None
    calls = [r[3] for r in rows if r[3] is not None]
    rets = [r[4] for r in finished]
    counters = [r[6] for r in rows]
    if rets:
        t_last = max(rets)
        if row["status"] == "ok":
            row["seconds"] = round(t_last - t_go, 4)
        row["p50_return_s"] = round(statistics.median(rets) - t_go, 4)
        row["last_call_start_s"] = round(max(calls) - t_go, 4) if calls else None
        row["last_join_to_all_s"] = round(t_last - max(calls), 4) if calls else None
        sets = [c["last_set_ok"] for c in counters if c.get("last_set_ok") is not None]
        if sets:
            row["complete_write_s"] = round(max(sets) - t_go, 4)
            row["tail_after_complete_s"] = round(t_last - max(sets), 4)
        if t_release is not None:
            held = [r for r in rows if r[0] == n - 1 and r[3] is not None]
            if held:
                row["last_join_latency_s"] = round(t_last - held[0][3], 4)
    ops: dict[str, Any] = {}
    for f in H.COUNT_FIELDS:
        total = sum(c.get(f, 0) or 0 for c in counters)
        ops[f] = round(total / n, 3 if f.startswith("t_") else 2)
    extra: dict[str, int] = {}
    for c in counters:
        for k, v in (c.get("extra") or {}).items():
            extra[k] = extra.get(k, 0) + v
    for k, v in sorted(extra.items()):
        ops[k] = round(v / n, 2)
    firsts: dict[str, list[float]] = {}
    for c in counters:
        for k, t in (c.get("first_call") or {}).items():
            firsts.setdefault(k, []).append(t - t_go)
    if firsts:
        row["first_call_s"] = {
            k: {"p50": round(statistics.median(v), 4), "max": round(max(v), 4), "nodes": len(v)}
            for k, v in sorted(firsts.items())
        }
    # requests each node sent between its next_rendezvous() call and its return
    for field in ("rt_client", "rt_thread"):
        values = [c.get(field) for c in counters if c.get(field) is not None]
        if values:
            row[f"{field}_p50"] = statistics.median(values)
            row[f"{field}_max"] = max(values)
    if t_release is not None:
        held = [r for r in rows if r[0] == n - 1]
        if held:
            c = held[0][6]
            row["rtt_last"] = c.get("rt_client") if c.get("rt_client") is not None else c.get("rt_thread")
            row["rtt_last_wire"] = c.get(
                "rt_thread"
            )  # every send of its thread, incl. connection handshakes (HELLO, CLIENT SETNAME)
            row["rtt_last_source"] = (
                "the held-back node's own redis.Redis client (execute_command + pipeline execute)"
                if c.get("rt_client") is not None
                else "requests sent by the held-back node's thread (redis-py send_packed_command / urllib3 urlopen)"
            )
    ops["max_set_state_per_node"] = max((c["set_state"] for c in counters), default=0)
    ops["max_failed_cas_per_node"] = max((c["set_failed"] for c in counters), default=0)
    ops["max_wakeups_per_node"] = max((c["wakeups"] for c in counters), default=0)
    ops["max_state_bytes"] = max((c["max_state_bytes"] for c in counters), default=0)
    row["backend_calls_per_node"] = ops


# ----------------------------------------------------------------------------------------------
# state size and decode time (no server)


def state_metrics(sizes: list[int], repeats: int = 30) -> list[dict[str, Any]]:
    from rdzv_core.state import NodeDesc, RendezvousState, decode_state, encode_state

    out = []
    for n in sizes:
        row: dict[str, Any] = {"nodes": n}
        for label, addr in (("fqdn", "worker-{:05d}.cluster.example.internal"), ("ip", "127.0.0.1")):
            keys = [NodeDesc(addr.format(i), 10000 + i % 50000, 0 if "{" in addr else i).key for i in range(n)]
            state = RendezvousState(
                run_id="bench", complete=True, participants={k: r for r, k in enumerate(sorted(keys))}, world_size=n
            )
            data = encode_state(state)
            t_dec, t_enc = [], []
            for _ in range(repeats):
                t0 = time.perf_counter()
                decode_state(data, "bench")
                t_dec.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                encode_state(state)
                t_enc.append(time.perf_counter() - t0)
            row[label] = {
                "key_len": len(keys[-1]),
                "state_bytes": len(data),
                "bytes_per_node": round(len(data) / n, 1),
                "decode_ms_median": round(statistics.median(t_dec) * 1000, 3),
                "decode_ms_max": round(max(t_dec) * 1000, 3),
                "encode_ms_median": round(statistics.median(t_enc) * 1000, 3),
            }
            # the same state with keep-alive times in it (backends without a liveness tracker)
            state.last_heartbeats = {k: time.time() for k in keys}
            data_hb = encode_state(state)
            t_hb = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                decode_state(data_hb, "bench")
                t_hb.append(time.perf_counter() - t0)
            row[label]["with_heartbeats_bytes_per_node"] = round(len(data_hb) / n, 1)
            row[label]["with_heartbeats_decode_ms_median"] = round(statistics.median(t_hb) * 1000, 3)
        row["dead_node_sweep_ms"] = _sweep_ms(n, repeats)
        torch_row = _torch_state_metrics(n, repeats)
        if torch_row:
            row["torch_pickle"] = torch_row
        out.append(row)
    return out


def _sweep_ms(n: int, repeats: int) -> float | None:
    """Median time of one dead-node sweep of the handler (``_TrackerLiveness.find_dead``, a
    private class) over an N-node state, with a tracker that answers at once "all alive":
    the client-side CPU each node spends per sweep, without any round trip."""
    try:
        from datetime import timedelta

        from rdzv_core.dynamic import RendezvousSettings, RendezvousTimeout, _TrackerLiveness
        from rdzv_core.state import NodeDesc, RendezvousState
    except ImportError:
        return None

    class _AllAlive:
        def keep_alive(self, node: str, ttl: float) -> None:
            pass

        def heartbeat_ages(self, nodes: list[str]) -> list[float | None]:
            return [0.1] * len(nodes)

        def forget_node(self, node: str) -> None:
            pass

    keys = [NodeDesc("127.0.0.1", 10000 + i // 1000, i).key for i in range(n)]
    state = RendezvousState(run_id="bench", participants=dict.fromkeys(keys, 0))
    try:
        liveness = _TrackerLiveness(
            _AllAlive(), RendezvousSettings("bench", n, n, RendezvousTimeout(), timedelta(seconds=5), 3)
        )
        times = []
        for i in range(repeats):
            t0 = time.perf_counter()
            liveness.find_dead(state, keys[(i * 7919) % n])
            times.append(time.perf_counter() - t0)
    except Exception:
        return None
    return round(statistics.median(times) * 1000, 3)


def _torch_state_metrics(n: int, repeats: int) -> dict[str, Any] | None:
    try:
        import base64
        import pickle
        from datetime import datetime, timezone

        from torch.distributed.elastic.rendezvous.dynamic_rendezvous import _NodeDesc, _RendezvousState
    except Exception:
        return None
    state = _RendezvousState()
    state.complete = True
    for i in range(n):
        node = _NodeDesc(f"worker-{i:05d}.cluster.example.internal", 10000 + i, 0)
        state.participants[node] = i
        state.last_heartbeats[node] = datetime.now(timezone.utc)
    data = pickle.dumps(state)
    wire = base64.b64encode(data)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        pickle.loads(base64.b64decode(wire))
        times.append(time.perf_counter() - t0)
    return {
        "state_bytes": len(data),
        "bytes_per_node": round(len(data) / n, 1),
        "c10d_base64_bytes_per_node": round(len(wire) / n, 1),
        "decode_ms_median": round(statistics.median(times) * 1000, 3),
    }


# ----------------------------------------------------------------------------------------------
# tables


def _f(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _kb(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value / 1024:.1f}k" if value >= 1024 else str(int(value))


def _kb1(value: Any) -> str:
    return "-" if value is None else f"{value / 1024:.1f}"


def _rtt(r: dict[str, Any]) -> str:
    field = "rt_client" if r.get("rt_client_p50") is not None else "rt_thread"
    if r.get(f"{field}_p50") is None:
        return "-"
    return f"{r[f'{field}_p50']:g}/{r[f'{field}_max']}"


def _sharing(r: dict[str, Any]) -> str:
    mode = r.get("client_sharing")
    if mode is None:
        return "-"
    text = mode if isinstance(mode, str) else ",".join(mode)
    return "SHARED (fallback)" if "FALLBACK" in text else text


def scale_table(rows: list[dict[str, Any]], last_join: list[dict[str, Any]] | None = None) -> str:
    """One line per backend and N: the burst round, with rtt_last and last join -> all ranks
    of the held-back run of the same backend and N (median over repetitions)."""
    headers = [
        "backend",
        "N",
        "clients",
        "status",
        "all ranks s",
        "req/node",
        "KB out/node",
        "KB in/node",
        "rt/node",
        "rtt p50/max",
        "rtt_last",
        "last join->all ms",
        "node RSS MB",
        "srv RSS MB",
    ]
    out = []
    for r in rows:
        rss = r.get("rss", {})
        status = r["status"] if r["status"] != "dnf" else f"DNF ({r.get('finished', 0)}/{r['nodes']})"
        lj = [
            x
            for x in (last_join or [])
            if x["backend"] == r["backend"] and x["nodes"] == r["nodes"] and x.get("status") == "ok"
        ]
        rtt_last = [x["rtt_last"] for x in lj if x.get("rtt_last") is not None]
        lat = [x["last_join_latency_s"] for x in lj if x.get("last_join_latency_s") is not None]
        out.append([
            r["backend"], r["nodes"], _sharing(r), status, _f(r.get("seconds"), 3),
            _f(r.get("server_requests_per_node"), 1), _kb1(r.get("bytes_out_per_node")), _kb1(r.get("bytes_in_per_node")),
            _f(r.get("requests_per_node"), 1), _rtt(r),
            _f(statistics.median(rtt_last), 1) if rtt_last else "-",
            _f(statistics.median(lat) * 1000, 1) if lat else "-",
            _f(rss.get("node_procs_sum_mb"), 0), _f(rss.get("server_peak_mb"), 0),
        ])  # fmt: skip
    return H.fmt_table(headers, out)


def last_join_table(rows: list[dict[str, Any]]) -> str:
    headers = [
        "backend",
        "N",
        "clients",
        "status",
        "rtt_last",
        "rtt_last wire",
        "last join -> all ranks ms",
        "all ranks s (incl. hold)",
        "req/node",
        "KB out/node",
    ]
    out = [
        [
            r["backend"], r["nodes"], _sharing(r), r["status"] if r["status"] != "skipped" else "skipped (" + r["reason"] + ")",
            _f(r.get("rtt_last")), _f(r.get("rtt_last_wire")), _f(None if r.get("last_join_latency_s") is None else r["last_join_latency_s"] * 1000, 1), _f(r.get("seconds"), 3),
            _f(r.get("server_requests_per_node"), 1), _kb1(r.get("bytes_out_per_node")),
        ]
        for r in rows
    ]  # fmt: skip
    return H.fmt_table(headers, out)


def idle_table(rows: list[dict[str, Any]]) -> str:
    headers = [
        "backend",
        "N",
        "interval s",
        "req/node/interval",
        "in B/node/interval",
        "out B/node/interval",
        "in B/interval total",
    ]
    out = []
    for r in rows:
        i = r.get("idle") or {}
        total = (
            None
            if i.get("bytes_in_per_node_per_interval") is None
            else i["bytes_in_per_node_per_interval"] * r["nodes"]
        )
        out.append(
            [
                r["backend"],
                r["nodes"],
                _f(i.get("interval_s"), 1),
                _f(i.get("requests_per_node_per_interval"), 2),
                _f(i.get("bytes_in_per_node_per_interval"), 1),
                _f(i.get("bytes_out_per_node_per_interval"), 1),
                _kb(total)
                if r["status"] == "ok"
                else r["status"] + (" (" + r["reason"] + ")" if r.get("reason") else ""),
            ]
        )
    return H.fmt_table(headers, out)


def state_table(rows: list[dict[str, Any]]) -> str:
    headers = [
        "N",
        "key len",
        "state B",
        "B/node",
        "decode ms",
        "encode ms",
        "B/node +hb",
        "decode ms +hb",
        "sweep ms",
        "torch pickle B/node",
        "torch unpickle ms",
    ]
    out = []
    for r in rows:
        f, t = r["fqdn"], r.get("torch_pickle") or {}
        out.append(
            [
                r["nodes"],
                f["key_len"],
                f["state_bytes"],
                f["bytes_per_node"],
                f["decode_ms_median"],
                f["encode_ms_median"],
                f["with_heartbeats_bytes_per_node"],
                f["with_heartbeats_decode_ms_median"],
                r.get("dead_node_sweep_ms", "-"),
                t.get("bytes_per_node", "-"),
                t.get("decode_ms_median", "-"),
            ]
        )
    return H.fmt_table(headers, out)


# ----------------------------------------------------------------------------------------------


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _run(backend: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """:func:`run_round` of a ``--backends`` entry (``redis-cluster``: redis on a cluster)."""
    if backend == "redis-cluster":
        return run_round("redis", *args, redis_cluster=True, **kwargs)
    return run_round(backend, *args, **kwargs)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--backends",
        "--backend",
        default=",".join(ALL_BACKENDS),
        help="comma list of: memory, redis-cluster, " + ", ".join(ALL_BACKENDS),
    )
    ap.add_argument(
        "--torch",
        action="store_true",
        help="add torch-c10d (torch's DynamicRendezvousHandler over C10dRendezvousBackend/TCPStore) to the backends",
    )
    ap.add_argument(
        "--redis-cluster",
        action="store_true",
        help="add redis-cluster: the redis backend (cluster=true) on a local Redis Cluster of 3 masters + 3 replicas",
    )
    ap.add_argument("--nodes", default="8,64,256,1024,4096")
    ap.add_argument("--procs", type=int, default=4, help="node processes (threads are spread over them)")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds per row before it is 'did not finish'")
    ap.add_argument("--last-call", type=float, default=1.0)
    ap.add_argument("--keep-alive-interval", type=float, default=None, help="default: the library's (5 s)")
    ap.add_argument("--keep-going", action="store_true", help="run larger N of a backend after a DNF")
    ap.add_argument(
        "--client-sharing",
        choices=("node", "process"),
        default="node",
        help="redis: one client per simulated node (default, as on real machines) or the library's per-process sharing (create_backend(params, shared=True))",
    )
    ap.add_argument(
        "--last-join-nodes",
        default="same",
        help="N for the held-back last-join runs (rtt_last, last join -> all ranks); 'same' = --nodes, '' = none",
    )
    ap.add_argument(
        "--switch-interval",
        type=float,
        default=None,
        help="sys.setswitchinterval() in the node processes (default 0.05 s, see _nodes.DEFAULT_SWITCH_INTERVAL; Python's own is 0.005 s)",
    )
    ap.add_argument(
        "--experiment",
        action="append",
        default=[],
        choices=sorted(N.EXPERIMENTS),
        help="benchmark-only monkeypatch modelling a proposed rdzv_core change (see _nodes.py)",
    )
    ap.add_argument("--repeat", type=int, default=1, help="repetitions of each last-join row")
    ap.add_argument("--idle-nodes", default="64,1024", help="N for the idle keep-alive runs ('' = none)")
    ap.add_argument("--idle-backends", default="redis,etcd-v3,torch-c10d")
    ap.add_argument("--idle-intervals", type=int, default=3)
    ap.add_argument("--state-nodes", default="64,1024,4096", help="N for the state size/decode section ('' = none)")
    ap.add_argument(
        "--pyspy", metavar="DIR", default=None, help="sample the node processes of every scale row with py-spy into DIR"
    )
    ap.add_argument("--skip-scale", action="store_true", help="only the extra sections")
    ap.add_argument("--output", default=os.path.join(H.RESULTS, "rendezvous_scale.json"))
    ap.add_argument("--render", metavar="JSON", help="only print the tables of an earlier run's JSON")
    args = ap.parse_args(argv)
    if args.render:
        with open(args.render) as f:
            print_tables(json.load(f), args.render)
        return 0

    H.raise_nofile()  # the servers started from here inherit it (Redis maxclients)
    #: What every row of this run shares.
    common: dict[str, Any] = {
        "last_call": args.last_call,
        "keep_alive_interval": args.keep_alive_interval,
        "client_sharing": args.client_sharing,
        "switch_interval": args.switch_interval,
        "experiments": args.experiment,
    }
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if args.torch and "torch-c10d" not in backends:
        backends.append("torch-c10d")
    if args.redis_cluster and "redis-cluster" not in backends:
        backends.append("redis-cluster")
    if args.last_join_nodes == "same":
        args.last_join_nodes = args.nodes
    result: dict[str, Any] = {
        "benchmark": "rendezvous_scale",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "git_commit": H.git_commit(),
        "machine": H.machine_description(),
        "args": vars(args),
        "skipped": {},
        "scale": [],
        "last_join": [],
        "idle": [],
        "state": [],
    }
    available = []
    for b in backends:
        why = N.backend_available("redis" if b == "redis-cluster" else b)
        if why:
            result["skipped"][b] = why
            log(f"skip {b}: {why}")
        else:
            available.append(b)

    def save() -> None:
        H.write_json(args.output, result)

    if args.state_nodes:
        result["state"] = state_metrics(_ints(args.state_nodes))
        save()
    if not args.skip_scale:
        for b in available:
            dnf_at = None
            for n in _ints(args.nodes):
                if dnf_at is not None and not args.keep_going:
                    result["scale"].append(
                        {"backend": b, "nodes": n, "status": "skipped", "reason": f"did not finish at N={dnf_at}"}
                    )
                    continue
                log(f"scale {b} N={n} ...")
                row = _run(b, n, args.procs, args.timeout, pyspy_dir=args.pyspy, **common)
                log(f"  -> {row['status']} {row.get('seconds')} s {row.get('error', '')}")
                result["scale"].append(row)
                save()
                if row["status"] in ("dnf", "error"):
                    dnf_at = n

    def failed_at(b: str, n: int) -> int | None:
        """The smallest N <= n at which the scale run of ``b`` did not finish (or errored)."""
        bad = [
            r["nodes"]
            for r in result["scale"]
            if r["backend"] == b and r["status"] in ("dnf", "error", "skipped") and r["nodes"] <= n
        ]
        return min(bad) if bad else None

    for b in available:
        for n in _ints(args.last_join_nodes):
            if failed_at(b, n) is not None and not args.keep_going:
                result["last_join"].append(
                    {
                        "backend": b,
                        "nodes": n,
                        "status": "skipped",
                        "reason": f"scale run did not finish at N={failed_at(b, n)}",
                    }
                )
                continue
            for rep in range(args.repeat):
                log(f"last-join {b} N={n} ({rep + 1}/{args.repeat}) ...")
                row = _run(b, n, args.procs, args.timeout, last_join=True, **common)
                log(f"  -> {row['status']} {row.get('last_join_latency_s')} s {row.get('error', '')}")
                result["last_join"].append(row)
                save()
    idle_backends = [b for b in args.idle_backends.split(",") if b in available]
    for b in idle_backends:
        for n in _ints(args.idle_nodes):
            if failed_at(b, n) is not None and not args.keep_going:
                result["idle"].append(
                    {
                        "backend": b,
                        "nodes": n,
                        "status": "skipped",
                        "reason": f"scale run did not finish at N={failed_at(b, n)}",
                    }
                )
                continue
            log(f"idle {b} N={n} ...")
            row = _run(b, n, args.procs, args.timeout, idle_intervals=args.idle_intervals, **common)
            log(
                f"  -> {row['status']} {row.get('idle', {}).get('bytes_in_per_node_per_interval')} B/node/interval {row.get('error', '')}"
            )
            result["idle"].append(row)
            save()
    result["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    save()

    print_tables(result, args.output)
    return 0


def print_tables(result: dict[str, Any], path: str) -> None:
    if result["scale"]:
        print("\n## Rendezvous scale (burst: all N nodes start together)\n")
        print(scale_table([r for r in result["scale"] if r["status"] != "skipped"], result.get("last_join")))
        print(
            "\nreq/node, KB out/node, KB in/node: measured at the server (Redis INFO stats, etcd /metrics) from the barrier until the last node returned, / N;"
            "\nrt/node: requests the node clients sent (client side); rtt p50/max: requests a node sent inside next_rendezvous(); rtt_last: those of the node held back until all others joined"
        )
        skipped = [
            f"{r['backend']} N={r['nodes']} ({r['reason']})" for r in result["scale"] if r["status"] == "skipped"
        ]
        if skipped:
            print("\nskipped: " + "; ".join(skipped))
    if result["last_join"]:
        print("\n## Last join (N-1 nodes joined and wait, then the last node calls next_rendezvous)\n")
        print(last_join_table(result["last_join"]))
    if result["idle"]:
        print("\n## Idle cost (completed round, keep-alives only)\n")
        print(idle_table(result["idle"]))
    if result["state"]:
        print("\n## State size and decode time (rdzv msgspec state vs torch pickle)\n")
        print(state_table(result["state"]))
    if result["skipped"]:
        print("\nbackends skipped: " + "; ".join(f"{k}: {v}" for k, v in result["skipped"].items()))
    print(f"\nJSON: {os.path.relpath(path)}")


if __name__ == "__main__":
    sys.exit(main())
