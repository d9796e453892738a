"""torch's legacy etcd protocol on rdzv (``etcd`` on v2, ``etcd-legacy-v3`` on v3), against a
real etcd: min/max, the last call, a late node waiting and the re-rendezvous it triggers
through ``num_nodes_waiting``, a node killed with SIGKILL (its keep-alive lapses), close,
timeout, a stale state removed by its TTL, the run's sub-tree expiring, corrupt state, and
the round's store under rdzv's store contract (torch's ``EtcdStore`` key layout).

TTLs are shortened through the configuration (torch's defaults are for interop, see
``test_etcd_legacy_interop.py``); every wait is bounded.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from rdzv_core.api import RendezvousClosedError, RendezvousParameters, RendezvousStateError, RendezvousTimeoutError
from rdzv_core.registry import get_rendezvous_handler
from rdzv_etcd.client import EtcdConfig
from rdzv_etcd.legacy.store import LegacyEtcdStore
from rdzv_etcd.legacy.transport import LegacyTransport
from rdzv_etcd.legacy.v2 import V2Transport
from rdzv_etcd.legacy.v3 import V3Transport
from tests.contracts import StoreContract
from tests.legacy_node import LegacyNodeProcess

pytestmark = pytest.mark.integration

BACKENDS = ["etcd", "etcd-legacy-v3"]
#: Short TTLs and timeouts so that the scenarios take seconds.
FAST: dict[str, Any] = {
    "timeout": 30,
    "last_call_timeout": 0.5,
    "setup_ttl": 2,
    "frozen_ttl": 3,
    "joinable_ttl": 3,
    "keep_alive_ttl": 2,
    "read_timeout": 10,
}
BOUND = 30.0


def _transport(backend: str, server: Any) -> LegacyTransport:
    config = EtcdConfig.from_endpoint(server.endpoint, {"read_timeout": 10})
    return V2Transport(config) if backend == "etcd" else V3Transport(config)


def _run_path(run_id: str) -> str:
    return f"/torchelastic/p2p/run_{run_id}"


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make_handler(etcd_server: Any) -> Iterator[Callable[..., Any]]:
    """``(backend, run_id, min_nodes, max_nodes, **config) -> handler``; stopped at the end."""
    handlers: list[Any] = []

    def make(backend: str, run_id: str, min_nodes: int, max_nodes: int, **config: Any) -> Any:
        params = RendezvousParameters(backend, etcd_server.endpoint, run_id, min_nodes, max_nodes, **{**FAST, **config})
        handler = get_rendezvous_handler(params)
        handlers.append(handler)
        return handler

    yield make
    for handler in handlers:
        handler.rendezvous.stop()
        handler.rendezvous.close()


def _rounds(handlers: list[Any], bound: float = BOUND) -> list[Any]:
    """``next_rendezvous()`` on every handler at once; the infos in order."""
    with ThreadPoolExecutor(len(handlers)) as pool:
        futures = [pool.submit(h.next_rendezvous) for h in handlers]
        return [f.result(timeout=bound) for f in futures]


def _version(info: Any) -> str:
    """``N`` of the round's store prefix ``.../v_N/kv/``."""
    return str(info.store.prefix.rstrip("/").split("/")[-2].removeprefix("v_"))


def _wait_until(what: str, predicate: Callable[[], bool], bound: float = BOUND) -> None:
    deadline = time.monotonic() + bound
    while not predicate():
        assert time.monotonic() < deadline, f"{what}: not within {bound} s"
        time.sleep(0.05)


def _run_id() -> str:
    return f"legacy-{uuid.uuid4().hex[:10]}"


def test_max_nodes_freezes_the_round_at_once(backend, make_handler):
    run = _run_id()
    handlers = [make_handler(backend, run, 2, 3, last_call_timeout=60) for _ in range(3)]
    started = time.monotonic()
    infos = _rounds(handlers)
    assert time.monotonic() - started < 20  # no last call: max_nodes froze the round
    assert sorted(i.rank for i in infos) == [0, 1, 2] and {i.world_size for i in infos} == {3}
    assert len({(i.bootstrap_store_info.master_addr, i.bootstrap_store_info.master_port) for i in infos}) == 1
    infos[0].store.set("shared", b"x")
    assert infos[2].store.get("shared") == b"x"
    assert {_version(i) for i in infos} == {"1"}


@pytest.mark.slow
def test_last_call_then_a_late_node_waits_and_everyone_rejoins(backend, make_handler):
    """min 2 / max 3: two nodes form a round after the last call; a third one waits, is
    counted in ``num_nodes_waiting``, and the members' re-rendezvous admits it."""
    run = _run_id()
    first = [make_handler(backend, run, 2, 3) for _ in range(2)]
    infos = _rounds(first)
    assert {i.world_size for i in infos} == {2} and sorted(i.rank for i in infos) == [0, 1]
    assert first[0].num_nodes_waiting() == 0
    late = make_handler(backend, run, 2, 3)
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(late.next_rendezvous)
        _wait_until("the late node counted as waiting", lambda: first[0].num_nodes_waiting() == 1)
        assert not waiting.done()
        again = _rounds(first)  # members come back: their keep-alives stop and lapse
        late_info = waiting.result(timeout=BOUND)
    everyone = [*again, late_info]
    assert sorted(i.rank for i in everyone) == [0, 1, 2] and {i.world_size for i in everyone} == {3}
    assert {_version(i) for i in everyone} == {"2"}


@pytest.mark.slow
def test_killed_node_keep_alive_lapses_and_the_others_reform(backend, etcd_server):
    """Three node processes form a round; one is killed with SIGKILL; a new node arrives and
    waits; the survivors re-rendezvous; the dead node's keep-alive lapses and version 2 holds
    the survivors and the newcomer, with one rank map seen by all."""
    run = _run_id()
    spec = {"impl": backend, "endpoint": etcd_server.endpoint, "run_id": run, "min": 3, "max": 3, "config": FAST}
    nodes = {name: LegacyNodeProcess(**spec, name=name, rounds=2, bound=60) for name in ("a", "b", "c")}
    late = None
    try:
        for node in nodes.values():
            node.next_event(BOUND)  # ready
        first = [node.next_event(BOUND) for node in nodes.values()]
        assert len({tuple(e["members"]) for e in first}) == 1 and sorted(first[0]["members"]) == ["a", "b", "c"]
        nodes["c"].kill()
        late = LegacyNodeProcess(**spec, name="d", rounds=1, bound=60)
        late.next_event(BOUND)
        second = [nodes["a"].next_event(BOUND), nodes["b"].next_event(BOUND), late.next_event(BOUND)]
        assert len({tuple(e["members"]) for e in second}) == 1
        assert sorted(second[0]["members"]) == ["a", "b", "d"] and {e["world_size"] for e in second} == {3}
        assert all(e["members"][e["rank"]] == e["name"] for e in second)
    finally:
        for node in [*nodes.values(), *([late] if late else [])]:
            node.close()


def test_close_wakes_a_waiting_node_and_refuses_later_joins(backend, make_handler):
    run = _run_id()
    waiter, closer = make_handler(backend, run, 2, 2), make_handler(backend, run, 2, 2)
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(waiter.next_rendezvous)
        _wait_until(
            "the waiter joined", lambda: (s := closer.rendezvous.read_state()) is not None and s.get("participants")
        )
        assert not closer.is_closed()
        closer.set_closed()
        with pytest.raises(RendezvousClosedError):
            waiting.result(timeout=BOUND)
    assert waiter.is_closed() and closer.is_closed()
    with pytest.raises(RendezvousClosedError):
        make_handler(backend, run, 1, 1).next_rendezvous()


def test_shutdown_closes_like_torch(backend, make_handler):
    run = _run_id()
    handler = make_handler(backend, run, 1, 1)
    assert handler.next_rendezvous().world_size == 1
    assert handler.shutdown() is True
    assert make_handler(backend, run, 1, 1).is_closed()


def test_timeout_when_too_few_nodes(backend, make_handler):
    handler = make_handler(backend, _run_id(), 2, 2, timeout=1)
    started = time.monotonic()
    with pytest.raises(RendezvousTimeoutError):
        handler.next_rendezvous()
    assert time.monotonic() - started < 5


@pytest.mark.slow
def test_stale_frozen_state_is_removed_by_its_ttl(backend, make_handler, etcd_server):
    """A frozen version whose nodes died (nobody confirms, nobody renews) blocks the run until
    its TTL lapses; then the next version forms."""
    run = _run_id()
    handlers = [make_handler(backend, run, 2, 2) for _ in range(2)]
    transport = _transport(backend, etcd_server)
    try:
        stale = {"status": "frozen", "version": "7", "participants": [0, 1], "keep_alives": []}
        transport.put(f"{_run_path(run)}/rdzv/active_version", json.dumps(stale), ttl=2)
        started = time.monotonic()
        infos = _rounds(handlers)
        assert time.monotonic() - started >= 1.0  # they waited for the TTL
        assert {_version(i) for i in infos} == {"1"} and sorted(i.rank for i in infos) == [0, 1]
    finally:
        transport.close()


@pytest.mark.slow
def test_run_subtree_expires_when_no_node_renews_it(backend, make_handler, etcd_server):
    run = _run_id()
    handler = make_handler(backend, run, 1, 1, run_ttl=2)
    assert handler.next_rendezvous().world_size == 1
    transport = _transport(backend, etcd_server)
    counter = f"{_run_path(run)}/rdzv/version_counter"
    try:
        assert transport.read(counter)[0] is not None
        handler.rendezvous.stop()  # as a job whose nodes are all gone
        _wait_until("the run's sub-tree expired", lambda: transport.read(counter)[0] is None, bound=15)
        assert transport.read(f"{_run_path(run)}/rdzv/active_version")[0] is None
    finally:
        transport.close()


def test_corrupt_state_is_a_state_error(backend, make_handler, etcd_server):
    run = _run_id()
    handler = make_handler(backend, run, 1, 1)
    transport = _transport(backend, etcd_server)
    try:
        transport.put(f"{_run_path(run)}/rdzv/active_version", "{not json")
        with pytest.raises(RendezvousStateError, match="active_version"):
            handler.next_rendezvous()
    finally:
        transport.close()


def test_store_keys_are_torchs_layout(backend, make_handler, etcd_server):
    run = _run_id()
    info = make_handler(backend, run, 1, 1).next_rendezvous()
    info.store.set("k/1", b"value")
    key = f"{_run_path(run)}/rdzv/v_1/kv/{base64.b64encode(b'k/1').decode()}"
    transport = _transport(backend, etcd_server)
    try:
        node, _ = transport.read(key)
        assert node is not None
        stored = base64.b64decode(node.value) if backend == "etcd" else node.value.encode()
        assert stored == b"value"  # v2: base64 as torch's EtcdStore writes it
    finally:
        transport.close()


class _LegacyStoreContract(StoreContract):
    api = "etcd"

    @pytest.fixture
    def store_pair(self, etcd_server):
        run = _run_id()
        transports = [_transport(self.api, etcd_server) for _ in range(2)]
        for transport in transports:
            transport.make_dir(_run_path(run), ttl=120)  # v3: keys bound to the run's lease
        prefix = f"{_run_path(run)}/rdzv/v_1/kv/"
        yield [LegacyEtcdStore(t.kv, prefix, timeout=5) for t in transports]
        for transport in transports:
            transport.close()

    @pytest.fixture
    def store(self, store_pair):
        return store_pair[0]

    @pytest.fixture
    def other_store(self, store_pair):
        return store_pair[1]


class TestLegacyStoreV2(_LegacyStoreContract):
    api = "etcd"


class TestLegacyStoreV3(_LegacyStoreContract):
    api = "etcd-legacy-v3"
