"""The etcd backends (v2 and v3) against a real etcd: torch's backend contract and more."""

from __future__ import annotations

import base64
import time

import pytest

from rdzv_core.api import RendezvousStateError
from rdzv_core.backend import ChangeNotifier, LivenessTracker
from tests.contracts import BackendContract
from tests.fixtures_etcd import raw_put, unique_run_id

pytestmark = pytest.mark.integration


class _EtcdBackendFixtures:
    api: str

    @pytest.fixture
    def backend(self, make_etcd):
        return make_etcd(self.api)[0]

    @pytest.fixture
    def other_backend(self, make_etcd, backend):
        return make_etcd(self.api, backend.keys.run_id)[0]

    @pytest.fixture
    def corrupt_state(self, etcd_server, backend):
        return lambda data: raw_put(etcd_server, self.api, backend.keys.state, data)


class TestEtcdV2BackendContract(_EtcdBackendFixtures, BackendContract):
    api = "v2"


class TestEtcdV3BackendContract(_EtcdBackendFixtures, BackendContract):
    api = "v3"


def test_capabilities_and_name(make_etcd, etcd_api):
    backend, _ = make_etcd(etcd_api)
    assert backend.name == f"etcd-{etcd_api}"
    assert isinstance(backend, ChangeNotifier)
    assert isinstance(backend, LivenessTracker)


def test_v3_joins_through_the_membership_unless_turned_off(make_etcd):
    from rdzv_core.backend import AtomicMembership

    assert isinstance(make_etcd("v3")[0], AtomicMembership)
    assert isinstance(make_etcd("v3", membership="true")[0], AtomicMembership)
    assert not isinstance(make_etcd("v3", membership="false")[0], AtomicMembership)
    assert not isinstance(make_etcd("v2")[0], AtomicMembership)
    with pytest.raises(ValueError, match="'membership' needs etcd's v3 API.*'etcd-v2'"):
        make_etcd("v2", membership="true")
    with pytest.raises(ValueError, match="membership"):
        make_etcd("v3", membership="maybe")


def test_token_is_the_keys_version(make_etcd, etcd_api):
    backend, _ = make_etcd(etcd_api)
    _, token, _ = backend.set_state(b"s")
    assert isinstance(token, int)
    assert backend.kv.get(backend.keys.state).version == token
    # a token given as its decimal string is the same token (survives a text round trip)
    assert backend.set_state(b"t", str(token))[2] is True


def test_foreign_tokens_never_match(make_etcd, etcd_api):
    backend, _ = make_etcd(etcd_api)
    _, token, _ = backend.set_state(b"s")
    for foreign in (True, 0, -token, 1.5, b"1", "x1", object()):
        state, current, has_set = backend.set_state(b"never", foreign)
        assert (state, current, has_set) == (b"s", token, False)


def test_state_without_rdzv_header_is_a_state_error(make_etcd, etcd_server, etcd_api):
    backend, _ = make_etcd(etcd_api)
    payload = b"valid but foreign"
    raw_put(etcd_server, etcd_api, backend.keys.state, base64.b64encode(payload) if etcd_api == "v2" else payload)
    with pytest.raises(RendezvousStateError, match="not written by rdzv"):
        backend.get_state()


def test_state_key_expires_after_key_ttl(make_etcd, etcd_api):
    backend, _ = make_etcd(etcd_api, key_ttl=1)
    _, token, _ = backend.set_state(b"short-lived")
    # v2: TTL 1 s; v3: a lease of 2 s (etcd may round it up): the watch sees the expiry.
    assert backend.wait_for_change(token, 15) is True
    assert backend.get_state() is None
    assert backend.set_state(b"again", token) is None  # the state vanished: caller re-reads


def test_writes_renew_the_state_ttl(make_etcd, etcd_server, etcd_api):
    backend, _ = make_etcd(etcd_api, key_ttl=600)
    backend.set_state(b"x")
    if etcd_api == "v2":
        import etcd

        node = etcd.Client(host=etcd_server.host, port=etcd_server.port).read(backend.keys.state)
        assert 590 <= node.ttl <= 600
    else:
        import etcd3gw

        client = etcd3gw.client(host=etcd_server.host, port=etcd_server.port)
        [(_, meta)] = client.get(backend.keys.state, metadata=True)
        lease = etcd3gw.Lease(int(meta["lease"]), client)
        assert 600 <= lease.ttl() <= 1200


def test_wait_for_change_without_state_wakes_on_creation(make_etcd, etcd_api):
    import threading

    backend, _ = make_etcd(etcd_api)
    other, _ = make_etcd(etcd_api, backend.keys.run_id)
    assert backend.wait_for_change(None, 0) is False
    result = {}
    waiter = threading.Thread(
        target=lambda: result.update(changed=backend.wait_for_change(None, 10), at=time.monotonic())
    )
    waiter.start()
    time.sleep(0.05)
    created = time.monotonic()
    other.set_state(b"created")
    waiter.join(15)
    assert result["changed"] is True and result["at"] - created < 2.0


def test_wait_for_change_sees_a_change_made_before_the_watch(make_etcd, etcd_api):
    backend, _ = make_etcd(etcd_api)
    _, token, _ = backend.set_state(b"v1")
    backend.set_state(b"v2", token)  # changed between "read" and "watch"
    start = time.monotonic()
    assert backend.wait_for_change(token, 10) is True
    assert time.monotonic() - start < 1.0


def test_v3_wait_for_change_after_compaction(make_etcd, etcd_server):
    import etcd3gw

    backend, _ = make_etcd("v3")
    _, token, _ = backend.set_state(b"v1")
    _, token2, _ = backend.set_state(b"v2", token)
    _, token3, _ = backend.set_state(b"v3", token2)
    client = etcd3gw.client(host=etcd_server.host, port=etcd_server.port)
    client.post(client.get_url("/kv/compaction"), json={"revision": str(token3), "physical": True})
    start = time.monotonic()
    assert backend.wait_for_change(token, 10) is True  # history gone: reported as a change
    assert time.monotonic() - start < 1.0


def test_keep_alive_does_not_touch_the_state(make_etcd, etcd_api):
    backend, _ = make_etcd(etcd_api)
    _, token, _ = backend.set_state(b"state")
    for node in ("a", "b", "c"):
        backend.keep_alive(node, 30)
    assert backend.wait_for_change(token, 0) is False
    assert backend.get_state() == (b"state", token)


def test_heartbeat_ages_of_odd_node_names(make_etcd, etcd_api):
    backend, _ = make_etcd(etcd_api)
    other, _ = make_etcd(etcd_api, backend.keys.run_id)
    nodes = ["[fe80::1]_77_0", "_hidden", "a/b", "ünï code_1_2", "..", "n" * 200]
    for node in nodes:
        other.keep_alive(node, 30)
    ages = backend.heartbeat_ages([*nodes, "absent"])
    assert all(age is not None and 0 <= age < 5 for age in ages[:-1]), ages
    assert ages[-1] is None
    other.forget_node(nodes[0])
    other.forget_node("never-there")
    assert backend.heartbeat_ages(nodes[:2])[0] is None


def test_liveness_record_expires(make_etcd, etcd_api):
    backend, _ = make_etcd(etcd_api)
    backend.keep_alive("mortal", 1)
    key = backend.keys.alive("mortal")
    _, revision = backend.kv.get_many([key])
    assert backend.heartbeat_ages(["mortal"])[0] is not None
    assert backend.kv.watch(key, revision + 1, 15) is True  # the expiry (v2 TTL / v3 lease)
    assert backend.heartbeat_ages(["mortal"]) == [None]


def test_corrupt_liveness_record_is_a_state_error(make_etcd, etcd_server, etcd_api):
    backend, _ = make_etcd(etcd_api)
    value = b"not a time"
    raw_put(etcd_server, etcd_api, backend.keys.alive("bad"), base64.b64encode(value) if etcd_api == "v2" else value)
    with pytest.raises(RendezvousStateError, match="timestamp"):
        backend.heartbeat_ages(["bad"])


def test_keep_alive_rejects_non_positive_ttl(make_etcd, etcd_api):
    backend, _ = make_etcd(etcd_api)
    with pytest.raises(ValueError, match="TTL"):
        backend.keep_alive("n", 0)


def test_runs_are_isolated(make_etcd, etcd_api):
    first, _ = make_etcd(etcd_api, "iso-" + unique_run_id())
    second, _ = make_etcd(etcd_api, first.keys.run_id + "/state")  # a run id that looks like a key
    first.set_state(b"first")
    assert second.get_state() is None
    second.set_state(b"second")
    assert first.get_state()[0] == b"first"


def test_join_queue(make_etcd, etcd_api):
    from rdzv_core.backend import JoinQueue

    backend, _ = make_etcd(etcd_api)
    other, _ = make_etcd(etcd_api, backend.keys.run_id)
    assert isinstance(backend, JoinQueue)
    assert backend.pending_joins() == [] and backend.pending_join_count() == 0
    assert backend.enqueue_join("n1") == 1
    assert other.enqueue_join("n:2") == 2
    assert backend.enqueue_join("_n3") == 3
    assert other.enqueue_join("n1") == 1  # enqueuing twice keeps the first place
    assert other.pending_joins() == ["n1", "n:2", "_n3"]
    assert backend.pending_join_count() == 3
    _, token, _ = backend.set_state(b"s")
    backend.ack_joins(["n1", "n:2", "never-queued"])
    assert other.pending_joins() == ["_n3"]
    assert other.enqueue_join("n4") == 2
    assert backend.wait_for_change(token, 0) is False  # the queue is not the state


def test_join_queue_concurrent_places_are_distinct(make_etcd, etcd_api):
    from concurrent.futures import ThreadPoolExecutor

    backends = [make_etcd(etcd_api, "q-" + unique_run_id())[0]]
    backends += [make_etcd(etcd_api, backends[0].keys.run_id)[0] for _ in range(7)]
    with ThreadPoolExecutor(8) as pool:
        places = list(pool.map(lambda i: backends[i].enqueue_join(f"node{i}"), range(8)))
    assert sorted(places) == list(range(1, 9))
    order = backends[0].pending_joins()
    assert [order.index(f"node{i}") + 1 for i in range(8)] == places


def test_state_write_with_unknown_outcome_is_resolved_by_reading(make_etcd, etcd_api, monkeypatch):
    from rdzv_etcd.client import OutcomeUnknownError

    backend, _ = make_etcd(etcd_api)
    _, token, _ = backend.set_state(b"v1")
    original = backend.kv.put_if

    def applied_then_lost(*args, **kwargs):  # the write lands, the answer is lost
        original(*args, **kwargs)
        raise OutcomeUnknownError("connection reset after sending")

    monkeypatch.setattr(backend.kv, "put_if", applied_then_lost)
    state, new_token, has_set = backend.set_state(b"v2", token)
    assert (state, has_set) == (b"v2", False) and new_token != token  # safe: the handler re-evaluates
    assert backend.enqueue_join("n") == 1  # a create-only entry is simply written again


def test_join_queue_garbage_is_a_state_error(make_etcd, etcd_server, etcd_api):
    backend, _ = make_etcd(etcd_api)
    backend.enqueue_join("good")
    value = b"x" if etcd_api == "v3" else base64.b64encode(b"x")
    raw_put(etcd_server, etcd_api, backend.keys.joins_prefix + "~ZZ%bad", value)
    with pytest.raises(RendezvousStateError, match="join queue"):
        backend.pending_joins()
