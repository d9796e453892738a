"""torchrun on the legacy etcd protocol over etcd v3 (``--rdzv-backend=etcd-legacy-v3``, the
``torchrun.handlers`` entry of rdzv): two agents x two workers all-reduce over gloo. torch's
``timeout`` (``--rdzv-conf timeout=``, 900 s when absent) reaches the legacy handler, which
reads it as torch's does."""

from __future__ import annotations

import json

import pytest

from rdzv_etcd.client import EtcdConfig
from rdzv_etcd.legacy.protocol import decode_state
from rdzv_etcd.legacy.v3 import V3Transport
from tests.e2e.test_torchrun import job, run_id, torchrun_command  # noqa: F401 (job: a fixture)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_torchrun_two_nodes_allreduce_on_etcd_legacy_v3(etcd_server, job):  # noqa: F811
    run = run_id()
    command = torchrun_command("etcd-legacy-v3", etcd_server.endpoint, run, "2", 2, "allreduce.py", conf="timeout=120")
    agents = [job.start(name, command) for name in ("a", "b")]
    codes = job.wait_all(agents)
    assert codes == [0, 0], job.logs()
    records = [json.loads((job.out / f"rank{r}.json").read_text()) for r in range(4)]
    assert [r["rank"] for r in records] == list(range(4))
    assert all(r["world_size"] == 4 and r["sum"] == r["expected"] == 10 for r in records)
    assert len({r["master"] for r in records}) == 1 and records[0]["master"].startswith("127.0.0.1:")
    # The legacy layout, on v3: version 1 was final, and the agents' shutdown closed it (as torch's).
    transport = V3Transport(EtcdConfig.from_endpoint(etcd_server.endpoint, {"read_timeout": 10}))
    try:
        node, _ = transport.read(f"/torchelastic/p2p/run_{run}/rdzv/active_version")
        assert node is not None
        state = decode_state(node)
        assert state["status"] == "closed" and state["version"] == "1" and len(state["keep_alives"]) == 2
    finally:
        transport.close()
