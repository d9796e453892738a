"""Cluster mode locked down: ``requirepass`` on every node with a per-run ACL user limited to
rdzv's keys, channels and commands (the README's rules plus cluster mode's), a wrong password
(a clear, immediate authentication error that never shows the password), and mutual TLS on
every node (client port, cluster bus, replication), on private local clusters."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from rdzv_core.api import RendezvousConnectionError
from rdzv_core.registry import get_rendezvous_handler
from rdzv_redis.server import RedisClusterServer, find_redis_server
from tests.integration.test_redis_cluster import HANDLER_CONFIG, close_handlers, run_rendezvous
from tests.integration.test_security_redis import RDZV_COMMANDS, make_pki

pytestmark = [pytest.mark.integration, pytest.mark.slow]
redis = pytest.importorskip("redis")

ADMIN_PASSWORD = "cluster-admin-pw-7731"
PASSWORD = "cluster-job-pw-9q2"
#: What an rdzv ACL user needs in cluster mode besides RDZV_COMMANDS (README).
CLUSTER_COMMANDS = ["+cluster|slots", "+command", "+eval", "+spublish", "+ssubscribe", "+sunsubscribe"]


@pytest.fixture(scope="module")
def acl_cluster():
    if not find_redis_server():
        pytest.skip("no redis-server")
    with RedisClusterServer(password=ADMIN_PASSWORD, node_timeout=5.0) as cluster:
        for node in cluster.nodes:  # ACL rules are per node: Redis Cluster does not spread them
            admin = redis.Redis(host=node.host, port=node.port, password=ADMIN_PASSWORD)
            try:
                admin.execute_command(
                    "ACL", "SETUSER", "job-c", "reset", "on", f">{PASSWORD}", "~rdzv:{job-c}:*", "resetchannels",
                    "&rdzv:{job-c}:*", *RDZV_COMMANDS, *CLUSTER_COMMANDS,
                )  # fmt: skip
            finally:
                admin.close()
        yield cluster


def params(cluster, run_id, endpoint=None, **config):
    from rdzv_core.api import RendezvousParameters

    return RendezvousParameters(
        "redis", endpoint or cluster.endpoint, run_id, 2, 2, cluster="true", **HANDLER_CONFIG, **config
    )


def test_acl_user_limited_to_its_run_rendezvous(acl_cluster):
    handlers = [
        get_rendezvous_handler(params(acl_cluster, "job-c", username="job-c", password=PASSWORD)) for _ in range(2)
    ]
    try:
        with ThreadPoolExecutor(max_workers=2) as pool:
            infos = run_rendezvous(handlers, pool)
        assert sorted(i.rank for i in infos) == [0, 1]
        infos[0].store.set("k", b"v")
        assert infos[1].store.get("k") == b"v"
        assert handlers[0].backend._client.notifier.wait_subscribed(5)  # SSUBSCRIBE is allowed
    finally:
        close_handlers(handlers)


def test_wrong_password_is_a_clear_authentication_error(acl_cluster):
    start = time.monotonic()
    with pytest.raises(RendezvousConnectionError, match="Authentication") as info:
        get_rendezvous_handler(params(acl_cluster, "job-c", username="job-c", password="wrong-" + PASSWORD))
    assert time.monotonic() - start < 5  # refused, not retried
    assert PASSWORD not in str(info.value) and "redis+cluster://" in str(info.value)


def test_mutual_tls_rendezvous_on_the_cluster(tmp_path):
    if not find_redis_server():
        pytest.skip("no redis-server")
    pytest.importorskip("cryptography")
    pki = make_pki(str(tmp_path))
    tls_files = dict(
        tls_cert_file=pki["server_cert"], tls_key_file=pki["server_key"], tls_ca_cert_file=pki["ca"]
    )  # fmt: skip
    with RedisClusterServer(node_timeout=5.0, tls_auth_clients=True, **tls_files) as cluster:
        tls = dict(ssl="true", ssl_ca_certs=pki["ca"], ssl_certfile=pki["client_cert"], ssl_keyfile=pki["client_key"])
        handlers = [get_rendezvous_handler(params(cluster, "tls-run", cluster.tls_endpoint, **tls)) for _ in range(2)]
        try:
            client = handlers[0].backend._client
            assert client.config.tls and client.config.display.startswith("rediss+cluster://")
            with ThreadPoolExecutor(max_workers=2) as pool:
                infos = run_rendezvous(handlers, pool)
            assert sorted(i.rank for i in infos) == [0, 1]
            infos[0].store.set("k", b"tls")
            assert infos[1].store.get("k") == b"tls"
            tls_ports = {node.tls_port for node in cluster.nodes}
            assert int(client.notifier._pubsub.node_name.rpartition(":")[2]) in tls_ports
        finally:
            close_handlers(handlers)
        # Without a client certificate the nodes refuse the connection.
        with pytest.raises(RendezvousConnectionError):
            get_rendezvous_handler(
                params(cluster, "tls-run", cluster.tls_endpoint, ssl="true", ssl_ca_certs=pki["ca"], retry_timeout=1)
            )
