"""A Redis Cluster node given without ``cluster=true``: the client does not follow
redirects in that mode, so a run whose slot another master serves fails at once, and the error
says to set ``cluster=true`` (the supported mode, tested in ``test_redis_cluster*.py``).
"""

from __future__ import annotations

import time

import pytest

from rdzv_core.api import RendezvousConnectionError, RendezvousParameters
from rdzv_core.registry import get_rendezvous_handler
from tests.integration.test_redis_cluster import key_slot

pytestmark = pytest.mark.integration


def test_without_cluster_mode_the_error_says_to_set_it(redis_cluster):
    run_id = "no-cluster-mode"
    owner = redis_cluster.master_of(key_slot(run_id))
    other = next(m for m in redis_cluster.masters() if m is not owner)
    start = time.monotonic()
    with pytest.raises(RendezvousConnectionError, match="cluster=true") as info:
        handler = get_rendezvous_handler(RendezvousParameters("redis", other.endpoint, run_id, 1, 1, retry_timeout=5))
        try:
            handler.next_rendezvous()
        finally:
            handler.backend.close()
            handler._store.close()
    assert time.monotonic() - start < 3  # a redirect is not retried without cluster mode
    assert f"{key_slot(run_id)} {owner.endpoint}" in str(info.value)
