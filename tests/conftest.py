"""Shared fixtures: real servers (Redis, etcd) are started by the plug-in fixture modules."""

pytest_plugins = ["tests.fixtures_redis", "tests.fixtures_etcd"]

pytest_plugins.append("tests.fixtures_redis_cluster")  # issue #16: Redis Cluster
