"""Cluster mode's configuration (``cluster=true``) and its error classification, without a
server: endpoint forms, refused combinations (each naming its keys), the scripts' sharded
publish, and how the cluster client's errors map to the retry policy."""

from __future__ import annotations

import pytest

from rdzv_core.api import RendezvousParameters
from rdzv_core.retry import Failure
from rdzv_redis.client import _FAILURE_OF, REDIS_CONFIG_KEYS, RedisConfig, _classify
from rdzv_redis.lua import ALL_SCRIPTS, scripts_for

pytestmark = pytest.mark.unit
redis = pytest.importorskip("redis")


def config(endpoint: str, **options: object) -> RedisConfig:
    return RedisConfig.from_params(RendezvousParameters("redis", endpoint, "run", 1, 1, **options))


def test_cluster_endpoint_lists_startup_nodes():
    cfg = config("node1:7000, node2:7001,node3", cluster="true", username="job", password="pw", ssl="true")
    assert cfg.cluster and cfg.cluster_nodes == (("node1", 7000), ("node2", 7001), ("node3", 6379))
    assert (cfg.host, cfg.port, cfg.db, cfg.username, cfg.tls) == ("node1", 7000, 0, "job", True)
    assert cfg.display == "rediss+cluster://node1:7000,node2:7001,node3:6379"
    assert "pw" not in repr(cfg)
    assert not config("host:6379").cluster and config("host:6379", cluster="false").cluster_nodes == ()
    assert {"cluster", "read_from_replicas"} <= REDIS_CONFIG_KEYS


@pytest.mark.parametrize(
    ("endpoint", "options", "needles"),
    [
        ("s1:26379", {"cluster": "true", "sentinel_master": "m"}, ("'cluster'", "'sentinel_master'")),
        ("n1:7000", {"cluster": "true", "read_from_replicas": "true"}, ("'read_from_replicas'",)),
        ("n1:7000", {"read_from_replicas": "false"}, ("'read_from_replicas'", "cluster=true")),
        ("n1:7000", {"cluster": "true", "db": "2"}, ("'db'",)),
        ("redis://u:hunter2@n1:7000,n2:7001", {"cluster": "true"}, ("no credentials",)),
        ("", {"cluster": "true"}, ("must list the nodes",)),
        ("n1:7000", {"cluster": "maybe"}, ("'cluster'",)),
        ("n1:7000,n2:7001", {}, ("'sentinel_master'",)),
    ],
)
def test_bad_cluster_configuration_names_the_keys(endpoint, options, needles):
    with pytest.raises(ValueError) as info:
        config(endpoint, **options)
    assert all(needle in str(info.value) for needle in needles), str(info.value)
    assert "hunter2" not in str(info.value)


def test_read_from_replicas_false_is_accepted():
    assert config("n1:7000", cluster="true", read_from_replicas="false").cluster


def test_cluster_scripts_publish_on_the_runs_shard():
    sharded = scripts_for(True)
    assert scripts_for(False) is ALL_SCRIPTS and sharded.keys() == ALL_SCRIPTS.keys()
    for name, source in sharded.items():
        assert "redis.call('PUBLISH'" not in source
        assert source.count("redis.call('SPUBLISH'") == ALL_SCRIPTS[name].count("redis.call('PUBLISH'")
    assert sum(source.count("SPUBLISH") for source in sharded.values()) >= 6


@pytest.mark.parametrize(
    ("exc", "cluster", "failure"),
    [
        (redis.exceptions.ClusterDownError("CLUSTERDOWN The cluster is down"), True, Failure.NOT_SENT),
        (redis.exceptions.MasterDownError("MASTERDOWN Link with MASTER is down"), True, Failure.NOT_SENT),
        (redis.exceptions.TryAgainError("TRYAGAIN"), True, Failure.NOT_SENT),
        (redis.exceptions.SlotNotCoveredError("Slot 42 is not covered"), True, Failure.NOT_SENT),
        (redis.exceptions.RedisClusterException("Redis Cluster cannot be connected"), True, Failure.NOT_SENT),
        (redis.exceptions.MovedError("3999 127.0.0.1:6381"), True, Failure.NOT_SENT),
        (redis.exceptions.AskError("3999 127.0.0.1:6381"), True, Failure.NOT_SENT),
        (redis.exceptions.ClusterError("TTL exhausted."), True, Failure.MAYBE_SENT),
        (redis.exceptions.ConnectionError("Error 111 connecting to 127.0.0.1:7000."), True, Failure.NOT_SENT),
        (redis.exceptions.ConnectionError("Connection reset by peer"), True, Failure.MAYBE_SENT),
        (redis.exceptions.ClusterCrossSlotError("CROSSSLOT"), True, Failure.REFUSED),
        (redis.exceptions.MovedError("3999 127.0.0.1:6381"), False, Failure.REFUSED),
    ],
)
def test_cluster_errors_are_classified_for_the_retry_policy(exc, cluster, failure):
    assert _FAILURE_OF[_classify(redis, exc, cluster)] is failure
