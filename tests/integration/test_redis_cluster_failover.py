"""Cluster mode under faults, on private local Redis Clusters (3 masters + 3 replicas,
``cluster-node-timeout`` 1 s): the master of the run's slot SIGKILLed mid-rendezvous and in a
complete round (its replica is promoted), and the run's slot migrated to another master during
a rendezvous. The settings are the README's: ``retry_timeout`` and the dead-node timeout
(``keep_alive_interval * keep_alive_max_attempt``) above the fail-over time.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from rdzv_core.registry import get_rendezvous_handler
from tests.integration.test_redis_cluster import BOUND, close_handlers, key_slot

pytestmark = [pytest.mark.integration, pytest.mark.slow]
redis = pytest.importorskip("redis")

#: The README's fail-over settings: a fail-over (2-4 s here) is shorter than the retry budget
#: and than the dead-node timeout (1 s x 6).
FAILOVER_CONFIG = dict(
    join_timeout=BOUND, last_call_timeout=0.3, retry_timeout=15, socket_timeout=2, connect_timeout=1,
    keep_alive_interval=1, keep_alive_max_attempt=6,
)  # fmt: skip


def wait_until(what, predicate, timeout=BOUND):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.05)


def replicated(master) -> None:
    """Wait until the master's replica has every write so far (``WAIT 1``): a fail-over may
    lose the last writes acknowledged before the crash otherwise (Redis replicates
    asynchronously)."""
    client = redis.Redis(host=master.host, port=master.port, socket_timeout=10)
    try:
        assert client.wait(1, 5000) == 1
    finally:
        client.close()


def listener_on(handler, node) -> bool:
    notifier = handler.backend._client.notifier
    return notifier.wait_subscribed(0.1) and notifier._pubsub.node_name == node.endpoint


def test_the_runs_master_killed_mid_rendezvous(own_redis_cluster, cluster_params):
    cluster = own_redis_cluster()
    run_id = "failover-mid"
    master = cluster.master_of(key_slot(run_id))
    handlers = [get_rendezvous_handler(cluster_params(cluster, run_id, 3, 3, **FAILOVER_CONFIG)) for _ in range(3)]
    pool = ThreadPoolExecutor(max_workers=3)
    try:
        waiting = [pool.submit(h.next_rendezvous) for h in handlers[:2]]
        wait_until("the first two nodes joined", lambda: len(handlers[0].state.participants) == 2)
        replicated(master)
        assert not any(f.done() for f in waiting)

        killed_at = time.monotonic()
        cluster.kill(master)
        waiting.append(pool.submit(handlers[2].next_rendezvous))
        infos = [f.result(timeout=BOUND) for f in waiting]
        completed_after = time.monotonic() - killed_at
        new_master = cluster.wait_failover(master)
        print(f"\n[measured] cluster fail-over: rendezvous completed {completed_after:.2f} s after the kill")

        assert new_master is not master and new_master.running
        assert sorted(i.rank for i in infos) == [0, 1, 2] and {i.world_size for i in infos} == {3}
        infos[0].store.set("after-failover", b"yes")
        assert infos[2].store.get("after-failover") == b"yes"
        # The shard listener moved to the promoted replica.
        wait_until("the listener follows the new master", lambda: listener_on(handlers[1], new_master))
        assert all(h.num_nodes_waiting() == 0 for h in handlers)  # nobody was declared dead
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        close_handlers(handlers)


def test_the_runs_master_killed_in_a_complete_round(own_redis_cluster, cluster_params):
    cluster = own_redis_cluster()
    run_id = "failover-round"
    master = cluster.master_of(key_slot(run_id))
    params = cluster_params(cluster, run_id, 2, 3, **FAILOVER_CONFIG)
    handlers = [get_rendezvous_handler(params) for _ in range(2)]
    pool = ThreadPoolExecutor(max_workers=3)
    try:
        first = [f.result(timeout=BOUND) for f in [pool.submit(h.next_rendezvous) for h in handlers]]
        assert sorted(i.rank for i in first) == [0, 1]
        before = handlers[0].state
        replicated(master)

        killed_at = time.monotonic()
        cluster.kill(master)
        new_master = cluster.wait_failover(master)
        failover_s = time.monotonic() - killed_at
        assert new_master is not master
        promoted_at = time.monotonic()
        print(f"\n[measured] cluster fail-over of a complete round: {failover_s:.2f} s to a new master")

        # Every member keeps beating through the new master; none is declared dead.
        nodes = [h._this_node.key for h in handlers]
        backend = handlers[0].backend

        def beaten_since_promotion() -> bool:
            ages = backend.heartbeat_ages(nodes)
            return all(age is not None and age < time.monotonic() - promoted_at for age in ages)

        wait_until("both members keep beating after the fail-over", beaten_since_promotion)
        after = handlers[0].state
        assert after.round == before.round and after.complete
        assert set(after.participants) == set(before.participants)
        assert all(h.num_nodes_waiting() == 0 for h in handlers)

        # The run goes on: a third node is admitted in a new round with both members.
        handlers.append(get_rendezvous_handler(params))
        late = pool.submit(handlers[2].next_rendezvous)
        wait_until("the members see the newcomer", lambda: handlers[0].num_nodes_waiting() == 1)
        infos = [f.result(timeout=BOUND) for f in [late, *[pool.submit(h.next_rendezvous) for h in handlers[:2]]]]
        assert sorted(i.rank for i in infos) == [0, 1, 2] and {i.world_size for i in infos} == {3}
        assert handlers[0].state.round == before.round + 1
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        close_handlers(handlers)


def test_the_runs_slot_migrated_during_a_rendezvous(own_redis_cluster, cluster_params):
    cluster = own_redis_cluster(node_timeout=5.0)
    run_id = "migrate-mid"
    slot = key_slot(run_id)
    source = cluster.master_of(slot)
    target = next(m for m in cluster.masters() if m is not source)
    handlers = [get_rendezvous_handler(cluster_params(cluster, run_id, 3, 3, **FAILOVER_CONFIG)) for _ in range(3)]
    pool = ThreadPoolExecutor(max_workers=3)
    try:
        waiting = [pool.submit(h.next_rendezvous) for h in handlers[:2]]
        wait_until("the first two nodes joined", lambda: len(handlers[0].state.participants) == 2)
        handlers[0]._store.set("before-migration", b"kept")

        cluster.migrate_slot(slot, target)  # SETSLOT IMPORTING/MIGRATING, MIGRATE, SETSLOT NODE
        assert cluster.master_of(slot) is target
        assert not any(f.done() for f in waiting)
        waiting.append(pool.submit(handlers[2].next_rendezvous))
        infos = [f.result(timeout=BOUND) for f in waiting]

        assert sorted(i.rank for i in infos) == [0, 1, 2] and {i.world_size for i in infos} == {3}
        assert handlers[2]._store.get("before-migration") == b"kept"
        # The keys live on the target now, and the listeners moved there.
        owner = redis.Redis(host=target.host, port=target.port)
        try:
            assert owner.exists(handlers[0].backend.keys.round) == 1
        finally:
            owner.close()
        wait_until("the listener follows the slot", lambda: listener_on(handlers[0], target))
        woke: dict[str, object] = {}

        def reader() -> None:
            start = time.monotonic()
            woke["value"] = infos[1].store.get("after-migration")
            woke["after"] = time.monotonic() - start

        thread = threading.Thread(target=reader)
        thread.start()
        time.sleep(0.3)  # the reader blocks first: its wake-up through the target is measured
        infos[0].store.set("after-migration", b"moved")
        thread.join(BOUND)
        assert woke["value"] == b"moved" and woke["after"] < 2
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        close_handlers(handlers)
