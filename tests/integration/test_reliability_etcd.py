"""Faults of the etcd server under real handlers (v2 and v3): a frozen server (SIGSTOP), a
restart from the data directory while a job runs, a server that stays down for a while, and
many runs on one server. Handlers come from the registry; every wait is bounded.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from rdzv_core.api import RendezvousConnectionError, RendezvousTimeoutError
from rdzv_core.registry import get_rendezvous_handler
from tests.fixtures_etcd import etcd_params, private_etcd
from tests.integration.rounds import assert_one_round, rendezvous, round_record, timed
from tests.servers import paused

pytestmark = pytest.mark.integration

#: Every wait of these tests is bounded by this (seconds).
BOUND = 30
#: etcd's client retries transport failures for this long (``EtcdConfig.retry_window``).
RETRY_WINDOW = 3.0


@pytest.fixture(scope="module")
def own_etcd():
    """A private etcd (v2 enabled) that the tests of this module may freeze and restart."""
    with private_etcd("rel", enable_v2=True) as server:
        yield server


@pytest.fixture
def make_handlers():
    made = []

    def make(server, api, run_id, n, min_nodes, max_nodes, **config):
        params = etcd_params(server, api, run_id, min_nodes, max_nodes, local_addr="127.0.0.1", **config)
        handlers = [get_rendezvous_handler(params) for _ in range(n)]
        made.extend(handlers)
        return handlers

    yield make
    for handler in made:
        handler._stop_heartbeats()
        handler.backend.close()


FAST = dict(read_timeout=0.5, join_timeout=BOUND, last_call_timeout=0.3, heartbeat_timeout=1, close_timeout=3)


@pytest.mark.slow
def test_frozen_server_every_call_ends_by_its_deadline_and_sigcont_resumes(own_etcd, make_handlers, etcd_api):
    run_id = f"frozen-{uuid.uuid4().hex[:8]}"
    handlers = make_handlers(
        own_etcd, etcd_api, run_id, 3, 3, 3, keep_alive_interval=0.3, keep_alive_max_attempt=2, **FAST
    )
    other = make_handlers(own_etcd, etcd_api, run_id + "-other", 1, 1, 1, **FAST)[0]
    infos = rendezvous(handlers)
    assert_one_round(infos)
    other.next_rendezvous()
    store = infos[0].store
    store.set_timeout(BOUND)
    calls = {
        "num_nodes_waiting": handlers[0].num_nodes_waiting,
        "next_rendezvous": handlers[1].next_rendezvous,
        "is_closed": handlers[2].is_closed,
        "store.get": lambda: store.get("never-set"),
        "store.set": lambda: store.set("k", b"v"),
        "shutdown (other run)": other.shutdown,
        "new handler": lambda: get_rendezvous_handler(etcd_params(own_etcd, etcd_api, "fresh", 1, 1, **FAST)),
    }
    results: dict[str, tuple[float, object]] = {}
    with paused(own_etcd):  # SIGSTOP, or docker pause for a container
        threads = [
            threading.Thread(target=lambda n=name, f=fn: results.__setitem__(n, timed(f))) for name, fn in calls.items()
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(BOUND)
        assert not any(t.is_alive() for t in threads), "a call hangs on the frozen server"
    print(
        f"\n[measured] frozen etcd-{etcd_api} (read_timeout=0.5, retry window 3 s): "
        + ", ".join(f"{n} {s:.2f} s" for n, (s, _) in results.items())
    )
    for name, (seconds, outcome) in results.items():
        # retry window + a last request's timeout, twice (a keep-alive tick may hold the
        # handler's lock for one budget), plus slack for a loaded machine
        assert seconds < 2 * (RETRY_WINDOW + 0.5) + 3.0, f"{name} took {seconds:.2f} s"
        if name == "shutdown (other run)":
            assert outcome is False
        else:
            assert isinstance(outcome, (RendezvousConnectionError, RendezvousTimeoutError)), f"{name} -> {outcome!r}"
    start = time.monotonic()
    assert_one_round(rendezvous(handlers))
    print(f"[measured] frozen etcd-{etcd_api}: new round {time.monotonic() - start:.2f} s after SIGCONT")


@pytest.mark.slow
def test_restart_mid_run_keeps_the_round(own_etcd, make_handlers, etcd_api):
    """etcd restarted from its data dir keeps the state: after a connection error (only once
    the retry window is spent) the round carries on, nobody is declared dead, the store kept."""
    run_id = f"restart-{uuid.uuid4().hex[:8]}"
    # dead after 1.2 s: the outage is longer, and must not get live nodes removed
    handlers = make_handlers(
        own_etcd,
        etcd_api,
        run_id,
        2,
        2,
        2,
        keep_alive_interval=0.4,
        keep_alive_max_attempt=3,
        **{**FAST, "read_timeout": 2},
    )
    infos = rendezvous(handlers)
    assert_one_round(infos)
    infos[0].store.set("kept", b"yes")
    before = round_record(handlers[0])

    own_etcd.kill()
    try:
        seconds, outcome = timed(handlers[0].num_nodes_waiting)
        assert isinstance(outcome, RendezvousConnectionError), outcome
        assert own_etcd.endpoint in str(outcome)
        # not before the retry window (minus the last back-off), and at most two windows (a
        # keep-alive tick may hold the handler's lock through its own) plus slack
        assert RETRY_WINDOW - 1.0 <= seconds < 2 * (RETRY_WINDOW + 2.0) + 2.0, f"gave up after {seconds:.2f} s"
    finally:
        own_etcd.restart()

    assert round_record(handlers[0]) == before  # the data dir kept the state (or membership)
    deadline = time.monotonic() + 2 * 1.2  # two dead-node timeouts: nobody is removed
    while time.monotonic() < deadline:
        assert [h.num_nodes_waiting() for h in handlers] == [0, 0]
        time.sleep(0.1)
    assert infos[1].store.get("kept") == b"yes"
    assert round_record(handlers[1]) == before  # the round was not rewritten


@pytest.mark.slow
def test_fifty_concurrent_runs_never_see_each_other(own_etcd, make_handlers):
    api = "v3"
    runs = [f"iso-{i}-{uuid.uuid4().hex[:6]}" for i in range(50)]
    groups = {
        run: make_handlers(own_etcd, api, run, 2, 2, 2, join_timeout=BOUND, last_call_timeout=0.3) for run in runs
    }
    handlers = [h for group in groups.values() for h in group]
    infos = dict(zip(handlers, rendezvous(handlers, timeout=90), strict=True))
    for run, group in groups.items():
        assert_one_round([infos[h] for h in group])
        keys = {h.node.key for h in group}
        assert all(set(h.state.participants) == keys and h.state.run_id == run for h in group)
        next(infos[h] for h in group if infos[h].rank == 0).store.set("who", run)
    for run, group in groups.items():
        assert {infos[h].store.get("who") for h in group} == {run.encode()}
    tokens = {run: round_record(group[0]) for run, group in groups.items()}
    closed = runs[0]
    groups[closed][0].set_closed()
    assert groups[closed][1].is_closed()
    for run in runs[1:]:
        group = groups[run]
        assert not group[0].is_closed() and group[1].num_nodes_waiting() == 0
        assert round_record(group[0]) == tokens[run]


# -- a 3-member cluster ----------------------------------------------------------------------------


class EtcdCluster:
    """Three etcd members on loopback (data on tmpfs when there is one, fast elections)."""

    def __init__(self) -> None:
        import subprocess

        from rdzv_core.utils import get_free_port
        from rdzv_etcd.server import find_etcd_binary

        binary = find_etcd_binary()
        self.base = tempfile.mkdtemp(prefix="rdzv-etcd-cluster-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
        self.ports = [(get_free_port(), get_free_port()) for _ in range(3)]
        peers = ",".join(f"m{i}=http://127.0.0.1:{peer}" for i, (_, peer) in enumerate(self.ports))
        self.processes = []
        for i, (client, peer) in enumerate(self.ports):
            command = [
                binary, "--name", f"m{i}", "--data-dir", os.path.join(self.base, f"m{i}"), "--enable-v2",
                "--listen-client-urls", f"http://127.0.0.1:{client}", "--advertise-client-urls", f"http://127.0.0.1:{client}",
                "--listen-peer-urls", f"http://127.0.0.1:{peer}", "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
                "--initial-cluster", peers, "--initial-cluster-state", "new", "--heartbeat-interval", "50", "--election-timeout", "500",
                "--logger", "zap", "--log-level", "error",
            ]  # fmt: skip
            self.processes.append(
                subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
            )

    @property
    def endpoint(self) -> str:
        """All members, comma-separated: the form the README documents."""
        return ",".join(f"127.0.0.1:{client}" for client, _ in self.ports)

    def _get(self, index: int, path: str):
        import json
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.ports[index][0]}{path}", timeout=1) as response:  # noqa: S310
            return json.loads(response.read())

    def wait_healthy(self) -> None:
        deadline = time.monotonic() + BOUND
        while True:
            try:
                if all(self._get(i, "/health")["health"] == "true" for i in range(3)):
                    return
            except OSError:
                pass
            assert time.monotonic() < deadline, "the etcd cluster never became healthy"
            time.sleep(0.1)

    def leader(self) -> int:
        return next(i for i in range(3) if self._get(i, "/v2/stats/self")["state"] == "StateLeader")

    def kill(self, index: int) -> None:
        self.processes[index].kill()
        self.processes[index].wait(10)

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
            process.wait(10)
        shutil.rmtree(self.base, ignore_errors=True)


@pytest.fixture
def etcd_cluster():
    try:
        cluster = EtcdCluster()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    try:
        cluster.wait_healthy()
        yield cluster
    finally:
        cluster.stop()


@pytest.mark.slow
def test_three_member_cluster_survives_losing_its_leader(etcd_cluster, make_handlers, etcd_api):
    """Endpoint = all members: the leader is killed while two nodes wait; the client fails over
    to the others, the watches resume there, and the round completes with nobody removed."""
    run_id = f"cluster-{uuid.uuid4().hex[:8]}"
    # Dead after 4 s: longer than an election (0.5 s here) plus a request stuck on a member
    # meanwhile (read_timeout), as the keep-alive settings must be in production too.
    handlers = make_handlers(
        etcd_cluster,
        etcd_api,
        run_id,
        3,
        3,
        3,
        read_timeout=1,
        join_timeout=BOUND,
        last_call_timeout=0.3,
        keep_alive_interval=1.0,
        keep_alive_max_attempt=4,
    )
    with ThreadPoolExecutor(max_workers=3) as pool:
        waiting = [pool.submit(h.next_rendezvous) for h in handlers[:2]]
        deadline = time.monotonic() + BOUND
        while not all(len(h.state.participants) == 2 for h in handlers[:2]):
            assert time.monotonic() < deadline, "the first two nodes never joined"
            time.sleep(0.05)
        leader = etcd_cluster.leader()
        killed_at = time.monotonic()
        etcd_cluster.kill(leader)
        late = pool.submit(handlers[2].next_rendezvous)
        infos = [f.result(timeout=BOUND) for f in [*waiting, late]]
    print(
        f"\n[measured] etcd-{etcd_api} 3-member cluster, leader (member {leader}) killed: round completed after {time.monotonic() - killed_at:.2f} s"
    )
    assert_one_round(infos)
    infos[0].store.set("k", b"v")
    assert infos[2].store.get("k") == b"v"
    assert [h.num_nodes_waiting() for h in handlers] == [0, 0, 0]
