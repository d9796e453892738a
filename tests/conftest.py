"""Shared fixtures: real servers (Redis, etcd) are started by the plug-in fixture modules."""

pytest_plugins = ["tests.servers", "tests.fixtures_redis", "tests.fixtures_etcd", "tests.fixtures_redis_cluster"]
