"""High availability with Redis Sentinel: configuration, and a real fail-over during a rendezvous.

Sentinel mode is switched on by the configuration key ``sentinel_master`` (the monitored
master's name); the endpoint then lists the sentinels, ``host[:port]`` separated by commas.
The fail-over test starts a master, a replica and three ``redis-sentinel`` processes on
loopback (local binaries or containers, as ``RDZV_TEST_SERVERS`` says: :mod:`tests.servers`),
kills the master (SIGKILL, or ``docker kill``) while nodes wait in a rendezvous, and checks
that the rendezvous completes on the promoted replica and that pub/sub follows it.
"""

from __future__ import annotations

import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor

import pytest

from rdzv_core.api import RendezvousConnectionError, RendezvousParameters
from rdzv_core.registry import get_rendezvous_handler
from rdzv_redis import RedisConfig, create_backend
from rdzv_redis.server import RedisServer
from tests import servers

pytestmark = pytest.mark.integration

PASSWORD = "m4ster-Pw-5e2a"
SENTINEL_PASSWORD = "s3ntinel-Pw-77c1"
MASTER = "mymaster"
#: Every wait of these tests is bounded by this (seconds).
BOUND = 30


def config_of(endpoint: str, **config) -> RedisConfig:
    return RedisConfig.from_params(RendezvousParameters("redis", endpoint, "run", 1, 1, **config))


# -- configuration (no server) ---------------------------------------------------------------


def test_sentinel_endpoint_forms():
    config = config_of(
        "s1, s2:26380 ,[::1]:26381",
        sentinel_master=MASTER,
        password=PASSWORD,
        sentinel_password=SENTINEL_PASSWORD,
        db=2,
    )
    assert config.sentinels == (("s1", 26379), ("s2", 26380), ("::1", 26381))
    assert (config.sentinel_master, config.db, config.password, config.sentinel_password) == (
        MASTER,
        2,
        PASSWORD,
        SENTINEL_PASSWORD,
    )
    assert config.display == "redis+sentinel://s1:26379,s2:26380,[::1]:26381/mymaster/2"
    assert config_of("s1", sentinel_master=MASTER, ssl="true").display == "rediss+sentinel://s1:26379/mymaster/0"
    for text in (repr(config), config.display):
        assert PASSWORD not in text and SENTINEL_PASSWORD not in text


def test_sentinel_password_from_the_environment(monkeypatch):
    monkeypatch.setenv("RDZV_REDIS_SENTINEL_PASSWORD", SENTINEL_PASSWORD)
    assert config_of("s1", sentinel_master=MASTER).sentinel_password == SENTINEL_PASSWORD
    assert config_of("s1", sentinel_master=MASTER, sentinel_password="given").sentinel_password == "given"


@pytest.mark.parametrize(
    ("endpoint", "config", "needle"),
    [
        ("s1:1,s2:2", {}, "sentinel_master"),  # several addresses without sentinel mode
        ("s1", {"sentinel_password": "x"}, "sentinel_master"),
        ("", {"sentinel_master": MASTER}, "sentinels"),
        (f"redis://:{PASSWORD}@s1:26379", {"sentinel_master": MASTER}, "no URL"),
        (f"u:{PASSWORD}@s1:26379", {"sentinel_master": MASTER}, "no URL"),
        ("s1:99999", {"sentinel_master": MASTER}, "65535"),
        ("s1", {"sentinel_master": "my master"}, "sentinel_master"),
        ("s1", {"sentinel_master": 7}, "sentinel_master"),
    ],
)
def test_bad_sentinel_configuration_names_the_key(endpoint, config, needle):
    with pytest.raises(ValueError, match=needle) as info:
        config_of(endpoint, **config)
    assert PASSWORD not in str(info.value)


def test_sentinel_keys_are_known_to_the_plugin(caplog):
    from rdzv_redis.client import REDIS_CONFIG_KEYS

    assert {"sentinel_master", "sentinel_password"} <= REDIS_CONFIG_KEYS


def test_no_sentinel_reachable_is_a_bounded_connection_error():
    from rdzv_core.utils import get_free_port

    endpoint = f"127.0.0.1:{get_free_port()},127.0.0.1:{get_free_port()}"
    params = RendezvousParameters(
        "redis",
        endpoint,
        "run",
        1,
        1,
        sentinel_master=MASTER,
        retry_timeout=0.5,
        connect_timeout=0.5,
        password=PASSWORD,
    )
    start = time.monotonic()
    with pytest.raises(RendezvousConnectionError, match="no sentinel named a master for 'mymaster'") as info:
        create_backend(params)
    assert time.monotonic() - start < 5
    text = "".join(traceback.format_exception(info.value))
    assert PASSWORD not in text
    assert "redis+sentinel://" in str(info.value) and "network:ConnectionError" in str(info.value)
    assert len(str(info.value)) < 1000


# -- a real sentinel-managed master ----------------------------------------------------------


class SentinelSet:
    """A master, one replica and three sentinels (quorum 2) on loopback, all with passwords."""

    def __init__(self) -> None:
        self.master = servers.redis_server(password=PASSWORD).start()
        self.replica = servers.redis_server(password=PASSWORD, replica_of=self.master.endpoint).start()
        self.sentinels = [
            servers.redis_sentinel(
                self.master.endpoint,
                MASTER,
                down_after=1.0,
                failover_timeout=2.0,
                master_password=PASSWORD,
                password=SENTINEL_PASSWORD,
            ).start()
            for _ in range(3)
        ]

    @property
    def endpoint(self) -> str:
        return ",".join(s.endpoint for s in self.sentinels)

    def params(self, run_id: str, min_nodes: int, max_nodes: int, **config) -> RendezvousParameters:
        config.setdefault("password", PASSWORD)
        config.setdefault("sentinel_password", SENTINEL_PASSWORD)
        return RendezvousParameters(
            "redis", self.endpoint, run_id, min_nodes, max_nodes, sentinel_master=MASTER, **config
        )

    def raw(self, server: RedisServer):
        import redis

        return redis.Redis(host=server.host, port=server.port, password=PASSWORD, socket_timeout=5)

    def master_address(self) -> tuple[str, int]:
        import redis

        sentinel = redis.Redis(
            host=self.sentinels[0].host, port=self.sentinels[0].port, password=SENTINEL_PASSWORD, socket_timeout=5
        )
        try:
            host, port = sentinel.sentinel_get_master_addr_by_name(MASTER)
            return host.decode(), int(port)
        finally:
            sentinel.close()

    def wait_ready(self) -> None:
        """Until the replica is in sync and every sentinel knows the replica and the others."""
        import redis

        deadline = time.monotonic() + BOUND
        clients = [
            redis.Redis(host=s.host, port=s.port, password=SENTINEL_PASSWORD, socket_timeout=5) for s in self.sentinels
        ]
        master = self.raw(self.master)
        try:
            while True:
                views = [c.sentinel_master(MASTER) for c in clients]
                if master.info("replication").get("connected_slaves") == 1 and all(
                    v["num-slaves"] >= 1 and v["num-other-sentinels"] >= 2 for v in views
                ):
                    return
                assert time.monotonic() < deadline, f"the sentinels never saw the whole set: {views}"
                time.sleep(0.1)
        finally:
            for client in [*clients, master]:
                client.close()

    def stop(self) -> None:
        for server in [*self.sentinels, self.replica, self.master]:
            server.stop()


@pytest.fixture
def sentinel_set():
    cluster = SentinelSet()  # skips the test when there is neither an image nor a binary
    try:
        cluster.wait_ready()
        yield cluster
    finally:
        cluster.stop()


@pytest.mark.slow
def test_rendezvous_completes_after_the_master_is_killed(sentinel_set, redis_run_id):
    config = dict(
        join_timeout=BOUND, last_call_timeout=0.3, retry_timeout=15, socket_timeout=1, connect_timeout=1,
        # dead after 1 s: shorter than the fail-over, which must not get live nodes removed
        keep_alive_interval=0.5, keep_alive_max_attempt=2,
    )  # fmt: skip
    params = sentinel_set.params(redis_run_id, 3, 3, **config)
    handlers = [get_rendezvous_handler(params) for _ in range(3)]
    pool = ThreadPoolExecutor(max_workers=3)
    try:
        backend = handlers[0].backend
        assert backend._client.config.sentinel_master == MASTER
        waiting = [pool.submit(h.next_rendezvous) for h in handlers[:2]]
        deadline = time.monotonic() + BOUND
        raw_master = sentinel_set.raw(sentinel_set.master)
        try:  # both nodes are in the round, and the replica has their writes
            while len(handlers[0].state.participants) < 2 or len(handlers[1].state.participants) < 2:
                assert time.monotonic() < deadline, "the first two nodes never joined"
                time.sleep(0.05)
            assert raw_master.wait(1, 5000) == 1
        finally:
            raw_master.close()
        assert not any(f.done() for f in waiting)

        killed_at = time.monotonic()
        sentinel_set.master.kill()
        waiting.append(pool.submit(handlers[2].next_rendezvous))
        infos = [f.result(timeout=BOUND) for f in waiting]
        completed_after = time.monotonic() - killed_at

        assert sorted(i.rank for i in infos) == [0, 1, 2] and {i.world_size for i in infos} == {3}
        assert sentinel_set.master_address()[1] == sentinel_set.replica.port  # the replica took over
        print(
            f"\n[measured] sentinel fail-over: rendezvous completed {completed_after:.2f} s after the master was killed"
        )
        assert completed_after < BOUND

        # The round's store and the pub/sub listener work on the new master.
        infos[0].store.set("after-failover", b"yes")
        assert infos[2].store.get("after-failover") == b"yes"
        notifier = backend._client.notifier
        assert notifier.wait_subscribed(10)
        current = backend.round_standing("observer").change_id
        woke: dict[str, float] = {}

        def wait() -> None:
            start = time.monotonic()
            woke["changed"] = handlers[1].backend.wait_for_round_change(current, 10)
            woke["after"] = time.monotonic() - start

        thread = threading.Thread(target=wait)
        thread.start()
        time.sleep(0.2)
        handlers[2].set_closed()  # a write through the new master
        thread.join(BOUND)
        assert woke["changed"] is True and woke["after"] < 3
        assert all(h.num_nodes_waiting() == 0 for h in handlers)  # nobody was declared dead
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        for handler in handlers:
            handler._stop_heartbeats()
            handler.backend.close()
            handler._store.close()


@pytest.mark.slow
def test_wrong_passwords_are_clear_authentication_errors(sentinel_set):
    for wrong in ("sentinel_password", "password"):  # the sentinels', the master's
        params = sentinel_set.params("run", 1, 1, retry_timeout=10, **{wrong: "wrong-" + PASSWORD})
        start = time.monotonic()
        with pytest.raises(RendezvousConnectionError, match="Authentication .* failed") as info:
            create_backend(params)
        assert time.monotonic() - start < 3  # not retried for the 10 s budget
        assert "sentinel_password" in str(info.value)
        text = "".join(traceback.format_exception(info.value))
        assert PASSWORD not in text and SENTINEL_PASSWORD not in text
