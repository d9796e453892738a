#!/usr/bin/env python
"""Store throughput and blocked-get wake-up latency: RedisStore vs torch TCPStore vs etcd stores.

    python benchmarks/store_ops.py --stores redis,tcpstore,etcd-v3,etcd-v2,torch-etcd-v2

For each store, against a fresh server on 127.0.0.1:

* ops/s of ``set``, ``get``, ``add`` and ``compare_set`` from one client, one call at a time
  (each call is a full round trip; ``--duration`` seconds per operation);
* wake-up latency of a blocked ``get``: a second process blocks in ``get(key)``, this process
  then ``set``\\ s the key with its ``time.monotonic()`` in the value; the latency is the
  getter's return time minus that stamp (so it includes the set's own round trip).
  p50/p99/max over ``--samples`` keys.

Stores: ``redis`` = rdzv_redis RedisStore; ``tcpstore`` = torch.distributed.TCPStore client
(server in its own process); ``etcd-v3``/``etcd-v2`` = rdzv_etcd EtcdStore over the v3
(etcd3gw) and v2 (python-etcd) APIs; ``torch-etcd-v2`` = torch's EtcdStore (python-etcd).

Output: a table on stdout and ``benchmarks/results/store_ops.json``.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import time
import uuid
from datetime import timedelta
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _harness as H  # noqa: E402

ALL_STORES = ("redis", "tcpstore", "etcd-v3", "etcd-v2", "torch-etcd-v2")
SERVER_OF = {
    "redis": H.RedisSrv,
    "tcpstore": H.TCPStoreSrv,
    "etcd-v3": H.EtcdSrv,
    "etcd-v2": H.EtcdSrv,
    "torch-etcd-v2": H.EtcdSrv,
}


def store_available(name: str) -> str | None:
    if name == "redis":
        return (
            None
            if H.is_available("redis") and H.is_available("rdzv_redis.store")
            else "rdzv_redis.store or redis-py missing"
        )
    if name == "tcpstore":
        return None if H.is_available("torch") else "torch not installed"
    if name in ("etcd-v3", "etcd-v2"):
        return None if H.is_available("rdzv_etcd.backend") else "rdzv_etcd.backend missing"
    if name == "torch-etcd-v2":
        return None if H.is_available("torch") and H.is_available("etcd") else "torch or python-etcd missing"
    return f"unknown store {name!r}"


def make_store(name: str, endpoint: str, run_id: str, timeout: float = 60.0) -> Any:
    """Return a store client of kind ``name`` on ``endpoint``."""
    host, _, port = endpoint.rpartition("://")[2].rpartition(":")
    if name == "redis":
        from rdzv_core.api import RendezvousParameters
        from rdzv_redis.backend import create_backend

        _, store = create_backend(RendezvousParameters("redis", endpoint, run_id, 1, 1))
        store.set_timeout(timedelta(seconds=timeout))
        return store
    if name == "tcpstore":
        from torch.distributed import TCPStore

        return TCPStore(host, int(port), None, False, timedelta(seconds=timeout), wait_for_workers=False)
    if name in ("etcd-v3", "etcd-v2"):
        from rdzv_core.api import RendezvousParameters
        from rdzv_etcd.backend import create_backend

        _, store = create_backend(RendezvousParameters(name, endpoint, run_id, 1, 1))
        store.set_timeout(timedelta(seconds=timeout))
        return store
    if name == "torch-etcd-v2":
        import etcd
        from torch.distributed.elastic.rendezvous.etcd_store import EtcdStore

        client = etcd.Client(host=host, port=int(port), protocol="http", read_timeout=60)
        return EtcdStore(client, f"/torch/bench/{run_id}", timeout=timedelta(seconds=timeout))
    raise ValueError(name)


def throughput(store: Any, duration: float, value_size: int) -> dict[str, Any]:
    value = b"x" * value_size
    store.set("get-key", value)
    store.set("cas-key", b"a")
    results: dict[str, Any] = {}

    def measure(op: str, fn: Any) -> None:
        try:
            for i in range(20):  # warm up (connections, scripts)
                fn(i)
        except Exception as exc:  # e.g. torch's EtcdStore has no compare_set
            results[op] = {"error": f"{type(exc).__name__}: {exc}"[:200]}
            return
        n, latencies = 0, []
        end = time.perf_counter() + duration
        start = time.perf_counter()
        while True:
            t0 = time.perf_counter()
            fn(n)
            t1 = time.perf_counter()
            latencies.append(t1 - t0)
            n += 1
            if t1 >= end:
                break
        elapsed = time.perf_counter() - start
        results[op] = {
            "ops_per_s": round(n / elapsed),
            "p50_ms": round(statistics.median(latencies) * 1000, 3),
            "p99_ms": round(H.percentile(latencies, 99) * 1000, 3),
            "ops": n,
        }

    measure("set", lambda i: store.set(f"set-key-{i % 1000}", value))
    measure("get", lambda i: store.get("get-key"))
    measure("add", lambda i: store.add("add-key", 1))
    pair = (b"a", b"b")

    def cas(i: int) -> None:
        expected, desired = pair[i % 2], pair[(i + 1) % 2]
        result = store.compare_set("cas-key", expected, desired)
        if bytes(result) != desired:
            raise RuntimeError(f"compare_set did not apply: {result!r}")

    measure("compare_set", cas)  # 20 warm-up calls (even) leave the value at "a" again
    return results


def getter_main(name: str, endpoint: str, run_id: str, samples: int, q: Any, cmd: Any) -> None:
    """The blocked side: for each key, announce, then block in get(key)."""
    try:
        store = make_store(name, endpoint, run_id)
        lat = []
        for i in range(samples):
            q.put(("waiting", i))
            value = store.get(f"wake-{i}")
            now = time.monotonic()
            lat.append(now - float(bytes(value).decode()))
        q.put(("done", lat))
    except BaseException as exc:
        q.put(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        q.close()
        q.join_thread()
        os._exit(0)


def wake_latency(name: str, endpoint: str, run_id: str, store: Any, samples: int, pause: float) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    proc = ctx.Process(target=getter_main, args=(name, endpoint, run_id, samples, q, None), daemon=True)
    proc.start()
    try:
        for i in range(samples):
            kind, payload = q.get(timeout=120)
            if kind == "error":
                raise RuntimeError(payload)
            time.sleep(pause)  # the getter is now blocked inside get()
            store.set(f"wake-{i}", repr(time.monotonic()).encode())
        kind, payload = q.get(timeout=60)
        if kind != "done":
            raise RuntimeError(payload)
        lat = [x * 1000 for x in payload]
        return {
            "samples": len(lat),
            "p50_ms": round(statistics.median(lat), 3),
            "p99_ms": round(H.percentile(lat, 99), 3),
            "max_ms": round(max(lat), 3),
            "mean_ms": round(statistics.fmean(lat), 3),
        }
    finally:
        H.kill_process_tree(proc, 2)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--stores", default=",".join(ALL_STORES))
    ap.add_argument("--duration", type=float, default=2.0, help="seconds per operation")
    ap.add_argument("--value-size", type=int, default=64)
    ap.add_argument("--samples", type=int, default=200, help="wake-up samples")
    ap.add_argument("--pause", type=float, default=0.02, help="seconds between the getter's announce and the set")
    ap.add_argument("--output", default=os.path.join(H.RESULTS, "store_ops.json"))
    ap.add_argument("--render", metavar="JSON", help="only print the table of an earlier run's JSON")
    args = ap.parse_args(argv)
    if args.render:
        import json

        with open(args.render) as f:
            print_table(json.load(f), args.render)
        return 0

    result: dict[str, Any] = {
        "benchmark": "store_ops",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "git_commit": H.git_commit(),
        "machine": H.machine_description(),
        "args": vars(args),
        "skipped": {},
        "stores": [],
    }
    for name in [s.strip() for s in args.stores.split(",") if s.strip()]:
        why = store_available(name)
        if why:
            result["skipped"][name] = why
            print(f"skip {name}: {why}", file=sys.stderr)
            continue
        row: dict[str, Any] = {"store": name, "status": "ok"}
        server = SERVER_OF[name]()
        try:
            server.start()
            row["server"] = getattr(server, "using", server.kind)
            run_id = "ops-" + uuid.uuid4().hex[:8]
            store = make_store(name, server.endpoint, run_id)
            print(f"[{time.strftime('%H:%M:%S')}] {name}: throughput ...", file=sys.stderr, flush=True)
            row["ops"] = throughput(store, args.duration, args.value_size)
            print(f"[{time.strftime('%H:%M:%S')}] {name}: wake-up latency ...", file=sys.stderr, flush=True)
            row["wake"] = wake_latency(name, server.endpoint, run_id, store, args.samples, args.pause)
        except Exception as exc:
            row["status"] = "error"
            row["error"] = f"{type(exc).__name__}: {exc}"[:1000]
            print(f"  {name} failed: {row['error']}", file=sys.stderr)
        finally:
            server.stop()
        result["stores"].append(row)
        H.write_json(args.output, result)
    result["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    H.write_json(args.output, result)

    print_table(result, args.output)
    return 0


def print_table(result: dict[str, Any], path: str) -> None:
    headers = [
        "store",
        "set ops/s",
        "get ops/s",
        "add ops/s",
        "compare_set ops/s",
        "set p50 ms",
        "wake p50 ms",
        "wake p99 ms",
        "wake max ms",
    ]
    rows = []
    for r in result["stores"]:
        ops, wake = r.get("ops", {}), r.get("wake", {})
        rows.append(
            [
                r["store"] if r["status"] == "ok" else f"{r['store']} ({r['status']})",
                *(ops.get(k, {}).get("ops_per_s", "-") for k in ("set", "get", "add", "compare_set")),
                ops.get("set", {}).get("p50_ms", "-"),
                wake.get("p50_ms", "-"),
                wake.get("p99_ms", "-"),
                wake.get("max_ms", "-"),
            ]
        )
    print("\n## Store operations (one client, one call at a time) and blocked-get wake-up\n")
    print(H.fmt_table(headers, rows))
    for r in result["stores"]:
        if r["status"] != "ok":
            print(f"{r['store']}: {r.get('error')}")
    if result["skipped"]:
        print("\nskipped: " + "; ".join(f"{k}: {v}" for k, v in result["skipped"].items()))
    print(f"\nJSON: {os.path.relpath(path)}")


if __name__ == "__main__":
    sys.exit(main())
