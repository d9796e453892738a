"""The shared Store and RendezvousBackend contracts, run against a real Redis.

The second client of each pair (``other_store``/``other_backend``) uses a different client
configuration, so it has its own connection pool and pub/sub connection: the cross-client tests
really go through the server.
"""

from __future__ import annotations

import pytest

from tests.contracts import BackendContract, StoreContract

pytestmark = pytest.mark.integration

#: A config that differs from the default one only in a harmless value -> a second client.
OTHER_CLIENT = {"socket_timeout": 9.5}


class TestRedisStoreContract(StoreContract):
    @pytest.fixture
    def store(self, redis_backend_factory, redis_run_id):
        return redis_backend_factory(redis_run_id)[1]

    @pytest.fixture
    def other_store(self, store, redis_backend_factory, redis_run_id):
        return redis_backend_factory(redis_run_id, **OTHER_CLIENT)[1]


class TestRedisBackendContract(BackendContract):
    @pytest.fixture
    def backend(self, redis_backend_factory, redis_run_id):
        return redis_backend_factory(redis_run_id)[0]

    @pytest.fixture
    def other_backend(self, backend, redis_backend_factory, redis_run_id):
        return redis_backend_factory(redis_run_id, **OTHER_CLIENT)[0]

    @pytest.fixture
    def corrupt_state(self, backend, redis_raw):
        def write(raw: bytes) -> None:
            redis_raw.set(backend.keys.state, raw)

        return write
