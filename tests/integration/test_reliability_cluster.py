"""Redis Cluster, as the README describes it: rdzv's client is not cluster-aware, but every key
of a run carries the hash tag ``{<run id>}`` (one slot, so every Lua script touches one slot)
and classic pub/sub is broadcast to every node. Pointed at the master that serves the run's
slot, a rendezvous works; pointed at another node, the error says what to do.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from rdzv_core.api import RendezvousConnectionError, RendezvousParameters
from rdzv_core.registry import get_rendezvous_handler
from rdzv_redis.server import RedisServer, find_redis_server

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BOUND = 30


@pytest.fixture(scope="module")
def cluster():
    if not find_redis_server() or not shutil.which("redis-cli"):
        pytest.skip("redis-server / redis-cli are not installed")
    nodes = [
        RedisServer(extra_args=["--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{i}.conf"]).start()
        for i in range(3)
    ]
    try:
        created = subprocess.run(
            ["redis-cli", "--cluster", "create", *[n.endpoint for n in nodes], "--cluster-yes"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert created.returncode == 0, created.stdout + created.stderr
        import redis

        client = redis.Redis(host=nodes[0].host, port=nodes[0].port)
        deadline = time.monotonic() + BOUND
        while client.cluster("info")["cluster_state"] != "ok":
            assert time.monotonic() < deadline, "the cluster never became ok"
            time.sleep(0.1)
        client.close()
        yield nodes
    finally:
        for node in nodes:
            node.stop()


def owner_and_other(nodes, run_id):
    import redis

    client = redis.Redis(host=nodes[0].host, port=nodes[0].port)
    try:
        slot = client.cluster("keyslot", f"rdzv:{{{run_id}}}:state")
        for start, end, master, *_ in client.execute_command("CLUSTER", "SLOTS"):
            if start <= slot <= end:
                port = int(master[1])
                break
    finally:
        client.close()
    owner = next(n for n in nodes if n.port == port)
    return slot, owner, next(n for n in nodes if n is not owner)


def test_pointed_at_the_slot_owner_a_rendezvous_works(cluster):
    run_id = "cluster-run"
    _, owner, _ = owner_and_other(cluster, run_id)
    params = RendezvousParameters("redis", owner.endpoint, run_id, 2, 2, last_call_timeout=0.3, join_timeout=BOUND)
    handlers = [get_rendezvous_handler(params) for _ in range(2)]
    try:
        with ThreadPoolExecutor(max_workers=2) as pool:
            infos = [f.result(timeout=BOUND) for f in [pool.submit(h.next_rendezvous) for h in handlers]]
        assert sorted(i.rank for i in infos) == [0, 1]
        infos[0].store.set("k", b"v")
        assert infos[1].store.get("k") == b"v"
        assert handlers[0].shutdown() and handlers[1].is_closed()
    finally:
        for handler in handlers:
            handler._stop_heartbeats()
            handler.backend.close()
            handler._store.close()


def test_pointed_at_another_node_the_error_says_what_to_do(cluster):
    run_id = "cluster-run-2"
    slot, owner, other = owner_and_other(cluster, run_id)
    start = time.monotonic()
    with pytest.raises(RendezvousConnectionError, match="does not serve this run's hash slot") as info:
        handler = get_rendezvous_handler(RendezvousParameters("redis", other.endpoint, run_id, 1, 1, retry_timeout=5))
        try:
            handler.next_rendezvous()
        finally:
            handler.backend.close()
            handler._store.close()
    assert time.monotonic() - start < 3  # a redirect is not retried
    assert f"{slot} {owner.endpoint}" in str(info.value)
