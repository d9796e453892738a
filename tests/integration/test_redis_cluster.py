"""Cluster mode (``cluster=true``) on a real local Redis Cluster (3 masters + 3 replicas):
a full rendezvous through the plug-in, the store and backend contracts, 20 runs spread over
every master, and the cost of one node (its connections). Fault injection (fail-over, slot
migration) is in ``test_redis_cluster_failover.py``.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest

from rdzv_core.registry import get_rendezvous_handler
from rdzv_redis.keys import RunKeys
from rdzv_redis.shard_pubsub import ShardPubSub
from tests.contracts import BackendContract, StoreContract

pytestmark = pytest.mark.integration
redis = pytest.importorskip("redis")

#: Every wait of these tests is bounded by this (seconds).
BOUND = 30
HANDLER_CONFIG = dict(join_timeout=BOUND, last_call_timeout=0.3)


def key_slot(run_id: str) -> int:
    from redis.crc import key_slot as crc_slot

    return int(crc_slot(RunKeys(run_id).state.encode()))


def close_handlers(handlers) -> None:
    for handler in handlers:
        handler._stop_heartbeats()
        handler.backend.close()
        handler._store.close()


def run_rendezvous(handlers, pool):
    futures = [pool.submit(h.next_rendezvous) for h in handlers]
    return [f.result(timeout=BOUND) for f in futures]


def rdzv_connections(cluster) -> dict[int, set[str]]:
    """Port -> ids of the connections named ``rdzv`` (``CLIENT LIST``) on every node."""
    ids = {}
    for node in cluster.nodes:
        client = redis.Redis(host=node.host, port=node.port, socket_timeout=5)
        try:
            ids[node.port] = {str(c["id"]) for c in client.client_list() if c.get("name") == "rdzv"}
        finally:
            client.close()
    return ids


def test_a_full_rendezvous_on_the_cluster(redis_cluster, cluster_params):
    run_id = "cluster-full"
    params = cluster_params(redis_cluster, run_id, 3, 3, **HANDLER_CONFIG)
    handlers = [get_rendezvous_handler(params) for _ in range(3)]
    try:
        with ThreadPoolExecutor(max_workers=3) as pool:
            infos = run_rendezvous(handlers, pool)
        assert sorted(i.rank for i in infos) == [0, 1, 2] and {i.world_size for i in infos} == {3}
        client = handlers[0].backend._client
        assert client.config.cluster and client.config.display.startswith("redis+cluster://")
        # Notifications ride sharded pub/sub on the master of the run's slot.
        pubsub = client.notifier._pubsub
        assert isinstance(pubsub, ShardPubSub)
        assert pubsub.node_name == redis_cluster.master_of(key_slot(run_id)).endpoint

        # A blocked store get on one node wakes on another node's set (SPUBLISH), promptly.
        woke: dict[str, object] = {}

        def reader() -> None:
            start = time.monotonic()
            woke["value"] = infos[1].store.get("late")
            woke["after"] = time.monotonic() - start

        thread = threading.Thread(target=reader)
        thread.start()
        time.sleep(0.3)  # let the reader block first (the wake-up is what is measured)
        infos[0].store.set("late", b"here")
        thread.join(BOUND)
        assert woke["value"] == b"here" and woke["after"] < 2
        # The MULTI reads and writes (rdzv status, forgetting a node) run on the run's master.
        state = handlers[0].backend.membership_state()
        assert state is not None and state.complete and len(state.participants) == 3
        handlers[0].backend.forget_node("nobody")
        assert handlers[0].shutdown() and handlers[2].is_closed()
    finally:
        close_handlers(handlers)


def test_one_node_costs_two_connections_on_the_runs_master_only(redis_cluster, cluster_backend_factory):
    run_id = "cluster-cost"
    before = rdzv_connections(redis_cluster)
    backend, store = cluster_backend_factory(redis_cluster, run_id)
    store.set("a", b"1")
    assert store.get("a") == b"1" and backend.get_state() is None
    assert store.wait(["a"], 1) is None  # a wait, through the (sharded) subscription
    assert backend._client.notifier.wait_subscribed(5)
    # One caller at a time here: concurrent callers of one node may open more pooled
    # connections (up to max_connections), still all to the run's master.
    after = rdzv_connections(redis_cluster)
    master = redis_cluster.master_of(key_slot(run_id))
    grown = {port: len(after[port] - before.get(port, set())) for port in after}  # opened since
    assert grown[master.port] == 2, grown  # commands + the shard listener
    assert all(n == 0 for port, n in grown.items() if port != master.port), grown


def pick_runs(cluster, count: int) -> dict[str, int]:
    """``count`` run ids whose slots fall on every master in turn: run id -> master port."""
    masters = [m.port for m in cluster.masters()]
    by_master: dict[int, list[str]] = {port: [] for port in masters}
    i = 0
    while min(len(v) for v in by_master.values()) < -(-count // len(masters)):
        run_id = f"spread-{i}"
        port = cluster.master_of(key_slot(run_id)).port
        by_master[port].append(run_id)
        i += 1
    chosen: dict[str, int] = {}
    while len(chosen) < count:
        for port in masters:
            if len(chosen) < count and by_master[port]:
                chosen[by_master[port].pop(0)] = port
    return chosen


def test_twenty_runs_on_every_master(redis_cluster, cluster_params):
    runs = pick_runs(redis_cluster, 20)
    assert len(set(runs.values())) == 3 and min(Counter(runs.values()).values()) >= 6
    handlers = {
        run_id: [
            get_rendezvous_handler(cluster_params(redis_cluster, run_id, 2, 2, **HANDLER_CONFIG)) for _ in range(2)
        ]
        for run_id in runs
    }
    everyone = [h for pair in handlers.values() for h in pair]
    try:
        with ThreadPoolExecutor(max_workers=len(everyone)) as pool:
            futures = {run_id: [pool.submit(h.next_rendezvous) for h in pair] for run_id, pair in handlers.items()}
            infos = {run_id: [f.result(timeout=BOUND) for f in fs] for run_id, fs in futures.items()}
        for run_id, (a, b) in infos.items():
            assert sorted([a.rank, b.rank]) == [0, 1] and a.world_size == b.world_size == 2
            a.store.set("run", run_id.encode())
            assert b.store.get("run") == run_id.encode()  # each run has its own store
            listener = handlers[run_id][0].backend._client.notifier._pubsub
            assert listener.node_name == f"127.0.0.1:{runs[run_id]}"
        # The keys of each run live on its master only.
        for run_id, port in runs.items():
            owner = redis.Redis(port=port)
            try:
                assert owner.exists(RunKeys(run_id).round) == 1
            finally:
                owner.close()
    finally:
        close_handlers(everyone)


class TestClusterStoreContract(StoreContract):
    @pytest.fixture
    def store(self, redis_cluster, cluster_backend_factory, redis_run_id):
        return cluster_backend_factory(redis_cluster, redis_run_id)[1]

    @pytest.fixture
    def other_store(self, store, redis_cluster, cluster_backend_factory, redis_run_id):
        return cluster_backend_factory(redis_cluster, redis_run_id)[1]


class TestClusterBackendContract(BackendContract):
    @pytest.fixture
    def backend(self, redis_cluster, cluster_backend_factory, redis_run_id):
        return cluster_backend_factory(redis_cluster, redis_run_id)[0]

    @pytest.fixture
    def other_backend(self, backend, redis_cluster, cluster_backend_factory, redis_run_id):
        return cluster_backend_factory(redis_cluster, redis_run_id)[0]

    @pytest.fixture
    def corrupt_state(self, backend, redis_cluster):
        from redis.cluster import ClusterNode, RedisCluster

        def write(raw: bytes) -> None:
            node = redis_cluster.nodes[0]
            client = RedisCluster(startup_nodes=[ClusterNode(node.host, node.port)])
            try:
                client.set(backend.keys.state, raw)
            finally:
                client.close()

        return write


def test_no_reachable_node_is_a_bounded_connection_error():
    from rdzv_core.api import RendezvousConnectionError, RendezvousParameters
    from rdzv_core.utils import get_free_port

    endpoint = f"127.0.0.1:{get_free_port('127.0.0.1')},127.0.0.1:{get_free_port('127.0.0.1')}"
    params = RendezvousParameters(
        "redis", endpoint, "nowhere", 1, 1, cluster="true", retry_timeout=1, connect_timeout=0.5
    )
    start = time.monotonic()
    with pytest.raises(
        RendezvousConnectionError, match=r"redis\+cluster://127\.0\.0\.1:\d+,127\.0\.0\.1:\d+ is unreachable"
    ):
        get_rendezvous_handler(params)
    assert time.monotonic() - start < 5
