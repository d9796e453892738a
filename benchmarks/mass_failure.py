#!/usr/bin/env python
"""Mass failure: a quarter of the nodes die at once (SIGKILL); do the survivors form one new round in time?

    python benchmarks/mass_failure.py --nodes 256,1024 --repeat 10 [--torch]

Per run: N nodes (threads) in 4 node processes (each with its own client per node) form a
complete round with ``min_nodes = 3N/4``, ``max_nodes = N``, keep-alive interval 1 s,
``keep_alive_max_attempt`` 2 (dead after 2 s), last call 3 s. One second later the parent
SIGKILLs one whole node process (N/4 nodes: sockets closed by the kernel, no goodbye). The
S = 3N/4 survivors behave as agents do: each polls ``num_nodes_waiting()`` every 0.1-0.5 s
(uniform) and, when it is > 0, calls ``next_rendezvous()`` again.

Measured per run: whether every survivor got a rank in one new round (the same round, ranks
exactly 0..S-1, world size S everywhere, each survivor re-joined once); seconds from the
kill until the last survivor had its rank; compared with the bound dead_after (2 s) +
last_call (3 s) + 1 s = 6 s. A run that exceeds ``--timeout`` is a failure (``timeout``).
``--keep-alive-interval``, ``--keep-alive-max-attempt`` and ``--last-call`` change the
settings, and the bound with them.

torch (``--torch``): torch's ``DynamicRendezvousHandler`` over ``C10dRendezvousBackend``
(a TCPStore client per node); its keep-alive is the handler's heartbeat thread. torch's
``num_nodes_waiting()`` counts only the wait list, and a dead participant is removed from a
complete round without anyone joining the wait list, so survivors polling it never re-join
(torchelastic learns of the failure from its workers instead). torch nodes therefore also
re-join once at the moment of the kill (``failure_signal``: the most favourable assumption,
the workers' collective fails at once); rows are marked so.

Output: a table on stdout, JSON in ``benchmarks/results/mass_failure.json``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import signal
import statistics
import sys
import time
import uuid
from dataclasses import dataclass
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _harness as H  # noqa: E402
import _nodes as N  # noqa: E402
from _harness import _get, log, make_server, split  # noqa: E402


@dataclass(frozen=True)
class Timing:
    """The handler settings of a run (seconds) and the bound its survivors must meet."""

    keep_alive_s: float = 1.0
    max_attempt: int = 2
    last_call_s: float = 3.0

    @property
    def bound_s(self) -> float:
        """dead_after + last_call + 1 s."""
        return self.keep_alive_s * self.max_attempt + self.last_call_s + 1.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "keep_alive_interval_s": self.keep_alive_s,
            "keep_alive_max_attempt": self.max_attempt,
            "last_call_s": self.last_call_s,
            "bound_s": self.bound_s,
        }


def run_once(
    backend: str, n: int, procs: int, timeout: float, timing: Timing = Timing(), settle: float = 1.0
) -> dict[str, Any]:
    """One run: form the round, kill the last node process, wait for the survivors."""
    row: dict[str, Any] = {
        "backend": backend,
        "nodes": n,
        "status": "ok",
        "loadavg_before": [round(x, 2) for x in os.getloadavg()],
    }
    server = make_server(N.SERVER_OF[backend])
    ctx = mp.get_context("spawn")
    children: list[Any] = []
    stop: Any = None
    try:
        server.start()
        row["server"] = getattr(server, "using", server.kind)
        nprocs = max(2, min(procs, n))
        parts = split(list(range(n)), nprocs)
        victim_slot = nprocs - 1
        dead = set(parts[victim_slot])
        survivors = [i for i in range(n) if i not in dead]
        s_count = len(survivors)
        spec = {
            "backend": backend,
            "endpoint": server.endpoint,
            "run_id": "mass-" + uuid.uuid4().hex[:8],
            "nodes": n,
            "min_nodes": max(1, (3 * n) // 4),
            "join_timeout": float(max(timeout, 60)),
            "last_call": timing.last_call_s,
            "keep_alive_interval": timing.keep_alive_s,
            "keep_alive_max_attempt": timing.max_attempt,
            "client_sharing": "node",
            "failure_signal": backend in N.TORCH_BACKENDS,
            "switch_interval": N.DEFAULT_SWITCH_INTERVAL,
        }
        row.update(
            min_nodes=spec["min_nodes"],
            survivors=s_count,
            killed=len(dead),
            failure_signal=spec["failure_signal"],
            switch_interval_s=spec["switch_interval"],
        )
        q = ctx.Queue()
        go = ctx.Event()  # set before the kill, waited on by the main threads only
        stop, failed = ctx.RawValue("i", 0), ctx.RawValue("i", 0)  # see _nodes.mass_child_main
        for part in parts:
            p = ctx.Process(target=N.mass_child_main, args=(spec, part, q, go, stop, failed), daemon=True)
            p.start()
            children.append(p)
        ready = H.await_ready(q, nprocs, time.monotonic() + max(120.0, timeout))
        H.client_sharing(row, ready, f"{backend} N={n}")
        ranks: dict[int, list[tuple]] = {}  # node -> its rank reports, in order
        errors: list[tuple] = []

        def collect(until: float, done: Any) -> bool:
            while not done():
                try:
                    kind, pid, payload = _get(q, until)
                except TimeoutError:
                    return False
                if kind == "rank":
                    ranks.setdefault(payload[0], []).append(payload)
                elif kind == "nerror":
                    errors.append(payload)
                elif kind == "error":
                    raise RuntimeError(f"node process {pid} failed:\n{payload}")
            return True

        t_go = time.monotonic()
        go.set()
        # 1. the complete first round
        if not collect(t_go + timeout, lambda: sum(1 for i in range(n) if ranks.get(i)) >= n):
            row["status"] = "no_first_round"
            row["first_round_nodes"] = sum(1 for i in range(n) if ranks.get(i))
            row["errors"] = sorted({e[2] for e in errors})[:5]
            return row
        first = [ranks[i][0] for i in range(n)]
        row["first_round_s"] = round(max(r[6] for r in first) - t_go, 3)
        row["first_round_ok"] = sorted(r[3] for r in first) == list(range(n)) and {r[4] for r in first} == {n}
        time.sleep(settle)  # the keep-alive threads beat
        # 2. kill a quarter of the nodes
        t_kill = time.monotonic()
        os.kill(children[victim_slot].pid, signal.SIGKILL)
        failed.value = 1
        children[victim_slot].join(5)

        def after_kill(i: int) -> list[tuple]:
            return [r for r in ranks.get(i, ())[1:] if r[5] >= t_kill]

        def survivors_done() -> bool:
            return all(after_kill(i) for i in survivors)

        finished = collect(t_kill + timeout, survivors_done)
        t_end = time.monotonic()
        if finished:  # a moment more, to see whether a further round follows
            collect(min(t_end + 1.0, t_kill + timeout), lambda: False)
        # re-joins before the kill: the first round broke up without any failure
        early = [r for i in range(n) for r in ranks.get(i, ())[1:] if r[5] < t_kill]
        row["rejoins_before_kill"] = len(early)
        second = {i: after_kill(i)[0] for i in survivors if after_kill(i)}
        row["rejoined"] = len(second)
        row["extra_rejoins"] = sum(max(0, len(after_kill(i)) - 1) for i in survivors)
        row["errors"] = sorted({e[2] for e in errors if e[3] >= t_kill})[:5]
        if second:
            row["kill_to_all_s"] = round(max(r[6] for r in second.values()) - t_kill, 3) if finished else None
            row["kill_to_first_rejoin_call_s"] = round(min(r[5] for r in second.values()) - t_kill, 3)
            rounds = {json.dumps(r[2]) for r in second.values()}
            row["new_rounds"] = sorted(rounds)[:5]
        if not finished:
            row["status"] = "timeout"
        else:
            one_round = len({json.dumps(r[2]) for r in second.values()}) == 1
            ranks_ok = sorted(r[3] for r in second.values()) == list(range(s_count)) and {
                r[4] for r in second.values()
            } == {s_count}
            row["one_round"], row["ranks_ok"] = one_round, ranks_ok
            if not (one_round and ranks_ok and row["extra_rejoins"] == 0):
                row["status"] = "bad_round"
            elif early:
                row["status"] = "rejoin_before_kill"
            row["within_bound"] = row["kill_to_all_s"] <= timing.bound_s
    except Exception as exc:
        row["status"] = "error"
        row["error"] = f"{type(exc).__name__}: {exc}"[-2000:]
    finally:
        if stop is not None:
            stop.value = 1
        for p in children:
            H.kill_process_tree(p, grace=3)
        try:
            server.stop()
        except Exception as exc:
            row.setdefault("warnings", []).append(f"server stop: {exc}")
    return row


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in runs if r["status"] == "ok"]
    times = [r["kill_to_all_s"] for r in ok]
    return {
        "runs": len(runs),
        "ok": len(ok),
        "within_bound": sum(1 for r in ok if r.get("within_bound")),
        "p50_s": None if not times else round(statistics.median(times), 3),
        "max_s": None if not times else round(max(times), 3),
        "statuses": {s: sum(1 for r in runs if r["status"] == s) for s in sorted({r["status"] for r in runs})},
    }


def table(result: dict[str, Any]) -> str:
    headers = [
        "backend",
        "N",
        "S",
        "runs ok/total",
        f"within {_timing_of(result).bound_s:g} s",
        "p50 s",
        "max s",
        "failures",
    ]
    out = []
    for key, s in result["summary"].items():
        backend, n = key.rsplit(":", 1)
        runs = [r for r in result["runs"] if r["backend"] == backend and r["nodes"] == int(n)]
        fails = ", ".join(f"{k} x{v}" for k, v in s["statuses"].items() if k != "ok") or "-"
        label = backend + (" (failure signal)" if runs and runs[0].get("failure_signal") else "")
        out.append(
            [
                label,
                n,
                runs[0].get("survivors", "-") if runs else "-",
                f"{s['ok']}/{s['runs']}",
                f"{s['within_bound']}/{s['runs']}",
                "-" if s["p50_s"] is None else f"{s['p50_s']:.2f}",
                "-" if s["max_s"] is None else f"{s['max_s']:.2f}",
                fails,
            ]
        )
    return H.fmt_table(headers, out)


def _timing_of(result: dict[str, Any]) -> Timing:
    s = result.get("settings", {})
    return Timing(s.get("keep_alive_interval_s", 1.0), s.get("keep_alive_max_attempt", 2), s.get("last_call_s", 3.0))


def print_tables(result: dict[str, Any], path: str) -> None:
    t = _timing_of(result)
    print(
        f"\n## Mass failure: N/4 nodes SIGKILLed; survivors re-form (bound {t.bound_s:g} s = dead after {t.keep_alive_s * t.max_attempt:g} s + last call {t.last_call_s:g} s + 1 s)\n"
    )
    print(table(result))
    print(
        "\nok = every survivor got a rank in one new round (ranks 0..S-1, world size S, one re-join each); p50/max over ok runs, kill -> last survivor's rank"
    )
    if result.get("skipped"):
        print("\nskipped: " + "; ".join(f"{k}: {v}" for k, v in result["skipped"].items()))
    print(f"\nJSON: {os.path.relpath(path)}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--backends", "--backend", default="redis", help="comma list of: redis, etcd-v3, etcd-v2, torch-c10d"
    )
    ap.add_argument(
        "--torch", action="store_true", help="add torch-c10d (with the failure signal, see the module docs)"
    )
    ap.add_argument("--nodes", default="256,1024")
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument(
        "--procs",
        type=int,
        default=4,
        help="node processes; the last one is killed (default 4: a quarter of the nodes)",
    )
    ap.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        help="seconds for the first round, and from the kill until every survivor has its rank",
    )
    ap.add_argument("--keep-going", action="store_true", help="run larger N of a backend after a failed run")
    ap.add_argument("--keep-alive-interval", type=float, default=Timing.keep_alive_s, help="seconds (default 1)")
    ap.add_argument(
        "--keep-alive-max-attempt",
        type=int,
        default=Timing.max_attempt,
        help="missed keep-alives before a node is dead (default 2)",
    )
    ap.add_argument("--last-call", type=float, default=Timing.last_call_s, help="seconds (default 3)")
    ap.add_argument("--output", default=os.path.join(H.RESULTS, "mass_failure.json"))
    ap.add_argument("--render", metavar="JSON", help="only print the table of an earlier run's JSON")
    args = ap.parse_args(argv)
    if args.render:
        with open(args.render) as f:
            print_tables(json.load(f), args.render)
        return 0
    H.raise_nofile()
    timing = Timing(args.keep_alive_interval, args.keep_alive_max_attempt, args.last_call)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if args.torch and "torch-c10d" not in backends:
        backends.append("torch-c10d")
    result: dict[str, Any] = {
        "benchmark": "mass_failure",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "git_commit": H.git_commit(),
        "machine": H.machine_description(),
        "args": vars(args),
        "settings": {**timing.as_dict(), "min_nodes": "3N/4", "max_nodes": "N", "poll_s": [0.1, 0.5]},
        "skipped": {},
        "runs": [],
        "summary": {},
    }
    for b in backends:
        why = N.backend_available(b)
        if why:
            result["skipped"][b] = why
            log(f"skip {b}: {why}")
            continue
        failed_at = None
        for n in [int(x) for x in args.nodes.split(",") if x.strip()]:
            if failed_at is not None and not args.keep_going:
                result["skipped"][f"{b}:{n}"] = f"no ok run at N={failed_at}"
                continue
            runs = []
            for rep in range(args.repeat):
                log(f"mass-failure {b} N={n} ({rep + 1}/{args.repeat}) ...")
                row = run_once(b, n, args.procs, args.timeout, timing)
                row["repeat"] = rep
                log(f"  -> {row['status']} kill->all {row.get('kill_to_all_s')} s {row.get('error', '')}")
                runs.append(row)
                result["runs"].append(row)
                result["summary"][f"{b}:{n}"] = summary(runs)
                H.write_json(args.output, result)
            if not any(r["status"] == "ok" for r in runs):
                failed_at = n
    result["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    H.write_json(args.output, result)
    print_tables(result, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
