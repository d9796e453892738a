"""rdzv_core.torch_bridge without a server: TorchStore semantics (Python and C++ callers),
parameter conversion, exception mapping, entry points, and a round on the memory backend."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from importlib.metadata import entry_points

import pytest

torch = pytest.importorskip("torch", reason="torch is not installed (pip install 'rdzv[torch]')")

import torch.distributed as dist  # noqa: E402
from torch.distributed.elastic.rendezvous import api as torch_api  # noqa: E402

from rdzv_core import api as rdzv_api  # noqa: E402
from rdzv_core import torch_bridge  # noqa: E402
from rdzv_core.store import HashStore, PrefixStore  # noqa: E402
from rdzv_core.torch_bridge import TorchRendezvousHandler, TorchStore  # noqa: E402

pytestmark = pytest.mark.unit


@pytest.fixture
def base() -> HashStore:
    return HashStore(timeout=10)


@pytest.fixture(params=["python", "c++"])
def store(request, base):
    """The TorchStore called from Python, and through torch's C++ PrefixStore (trampoline)."""
    wrapped = TorchStore(base)
    if request.param == "python":
        yield wrapped
    else:
        # `wrapped` stays referenced by this frame: C++ reaches its methods through it.
        prefixed = dist.PrefixStore("pre", wrapped)
        yield prefixed


def test_is_a_torch_store(base):
    wrapped = TorchStore(base)
    assert isinstance(wrapped, dist.Store)
    assert wrapped.rdzv_store is base
    assert wrapped.timeout == timedelta(seconds=10)
    assert wrapped.has_extended_api()
    assert wrapped.clone() is wrapped
    with pytest.raises(TypeError, match="rdzv_core.store.Store"):
        TorchStore(dist.HashStore())  # type: ignore[arg-type]


def test_c10d_api(store):
    store.set("s", "text")
    store.set("b", b"\x00\xffbin")
    assert store.get("s") == b"text"
    assert store.get("b") == b"\x00\xffbin"
    assert store.add("n", 2) == 2
    assert store.add("n", -5) == -3
    assert store.compare_set("cs", "", "v1") == b"v1"
    assert store.compare_set("cs", "v1", "v2") == b"v2"
    assert store.compare_set("cs", "nope", "v3") == b"v2"
    assert store.compare_set("absent", "x", "y") == b"x"
    assert store.check(["s", "b"]) and not store.check(["s", "absent"])
    store.multi_set(["m1", "m2"], ["a", b"b"])
    assert store.multi_get(["m2", "m1"]) == [b"b", b"a"]
    store.append("ap", "x")
    store.append("ap", b"y")
    assert store.get("ap") == b"xy"
    keys = store.num_keys()
    assert keys >= 7
    assert store.delete_key("ap") is True
    assert store.delete_key("ap") is False
    assert store.num_keys() == keys - 1
    store.wait(["s", "m1"])
    store.wait(["s"], timedelta(seconds=1))


def test_timeouts_raise_dist_store_error(store):
    store.set_timeout(timedelta(seconds=0.2))
    assert store.timeout == timedelta(seconds=0.2)
    for call in (lambda: store.get("missing"), lambda: store.wait(["missing"]), lambda: store.multi_get(["missing"])):
        start = time.monotonic()
        with pytest.raises(dist.DistStoreError, match="[Tt]imeout"):  # what torch's store tests match
            call()
        assert 0.15 <= time.monotonic() - start < 5
    start = time.monotonic()
    with pytest.raises(dist.DistStoreError):
        store.wait(["missing"], timedelta(seconds=0.1))
    assert time.monotonic() - start < 5


def test_blocking_get_wakes_on_set(store):
    store.set_timeout(timedelta(seconds=10))
    result = {}

    def reader():
        result["value"] = store.get("later")

    thread = threading.Thread(target=reader)
    thread.start()
    time.sleep(0.05)
    store.set("later", "v")
    thread.join(10)
    assert result["value"] == b"v"


def test_own_timeout_does_not_change_the_rdzv_store(base):
    wrapped = TorchStore(base)
    wrapped.set_timeout(timedelta(seconds=0.1))
    assert base.timeout == timedelta(seconds=10)
    with pytest.raises(dist.DistStoreError):
        wrapped.get("missing")
    wrapped.set_timeout(2.5)  # float seconds are accepted too
    assert wrapped.timeout == timedelta(seconds=2.5)


def test_zero_timeout_means_no_timeout(base):
    wrapped = TorchStore(base, timeout=timedelta(0))
    threading.Timer(0.3, lambda: base.set("late", b"1")).start()
    assert wrapped.get("late") == b"1"


def test_torch_utilities_accept_it(base):
    """torch's elastic barrier (used by the agent's exit barrier) and c10d's Store.barrier."""
    from torch.distributed.elastic.utils import store as store_util

    stores = [TorchStore(PrefixStore("round", base)) for _ in range(3)]
    errors: list[BaseException] = []

    def agent(s):
        try:
            store_util.barrier(s, 3, "exit", barrier_timeout=10)
            s.barrier("c10d-barrier", 3)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=agent, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    assert all(s.timeout == timedelta(seconds=10) for s in stores)  # restored by the barrier


def test_gloo_process_group_bootstraps_over_it(base):
    """C++ (gloo) uses the store through torch's trampoline from its own threads."""
    holders = [TorchStore(base) for _ in range(2)]
    results: list[float | None] = [None, None]
    errors: list[BaseException] = []

    def rank(r: int) -> None:
        try:
            group = dist.ProcessGroupGloo(dist.PrefixStore("pg", holders[r]), r, 2, timedelta(seconds=30))
            tensor = torch.tensor([float(r + 1)])
            group.allreduce([tensor]).wait()
            results[r] = tensor.item()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert results == [3.0, 3.0]


def test_connection_error_maps_to_dist_network_error():
    class Broken(HashStore):
        def set(self, key, value):
            raise rdzv_api.RendezvousConnectionError("redis://127.0.0.1:1 unreachable")

    with pytest.raises(dist.DistNetworkError, match="unreachable"):
        TorchStore(Broken()).set("k", "v")


# -- parameters, exceptions, entry points -----------------------------------------------------


def test_to_rdzv_parameters_passes_config_and_drops_timeout():
    params = torch_api.RendezvousParameters(
        "redis",
        "127.0.0.1:6379",
        "job",
        2,
        3,
        local_addr="10.0.0.1",
        timeout=900,
        password="pw",
        join_timeout="60",
        ssl="true",
    )
    converted = torch_bridge.to_rdzv_parameters(params)
    assert isinstance(converted, rdzv_api.RendezvousParameters)
    assert (converted.backend, converted.endpoint, converted.run_id) == ("redis", "127.0.0.1:6379", "job")
    assert (converted.min_nodes, converted.max_nodes, converted.local_addr) == (2, 3, "10.0.0.1")
    assert converted.config == {"password": "pw", "join_timeout": "60", "ssl": "true"}
    assert "pw" not in repr(converted)


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        (rdzv_api.RendezvousClosedError, torch_api.RendezvousClosedError),
        (rdzv_api.RendezvousTimeoutError, torch_api.RendezvousTimeoutError),
        (rdzv_api.RendezvousConnectionError, torch_api.RendezvousConnectionError),
        (rdzv_api.RendezvousStateError, torch_api.RendezvousStateError),
        (rdzv_api.RendezvousGracefulExitError, torch_api.RendezvousGracefulExitError),
        (rdzv_api.RendezvousError, torch_api.RendezvousError),
    ],
)
def test_handler_maps_exceptions(ours, theirs):
    class Failing(rdzv_api.RendezvousHandler):
        def get_backend(self):
            return "fake"

        def get_run_id(self):
            return "run"

        def next_rendezvous(self):
            raise ours("boom next")

        def is_closed(self):
            raise ours("boom is_closed")

        def set_closed(self):
            raise ours("boom set_closed")

        def num_nodes_waiting(self):
            raise ours("boom waiting")

        def shutdown(self):
            raise ours("boom shutdown")

    handler = TorchRendezvousHandler(Failing())
    for call in (
        handler.next_rendezvous,
        handler.is_closed,
        handler.set_closed,
        handler.num_nodes_waiting,
        handler.shutdown,
    ):
        with pytest.raises(theirs, match="boom") as info:
            call()
        assert type(info.value) is theirs
        assert isinstance(info.value.__cause__, ours)


def test_store_timeout_error_maps_to_rendezvous_timeout():
    from rdzv_core.store import StoreTimeoutError

    assert type(torch_bridge.to_torch_error(StoreTimeoutError("t"))) is torch_api.RendezvousTimeoutError


def test_entry_points_are_zero_argument_factories():
    found = {ep.name: ep for ep in entry_points(group="torchrun.handlers")}
    assert {"redis", "etcd-v3"} <= set(found)
    for name in ("redis", "etcd-v3"):
        assert found[name].value.endswith(".torch_handler_creator")  # the plug-in's BackendPlugin
        creator = found[name].load()()
        assert callable(creator)
        with pytest.raises(ValueError, match=name):
            creator(torch_api.RendezvousParameters("static", "x:1", "run", 1, 1))


def test_torch_registry_registers_them():
    from torch.distributed.elastic.rendezvous import registry  # noqa: F401 - registers plug-ins on import
    from torch.distributed.elastic.rendezvous.api import rendezvous_handler_registry

    creators = rendezvous_handler_registry._registry
    assert creators["redis"].__name__ == "create_redis_handler"
    assert creators["etcd-v3"].__name__ == "create_etcd_v3_handler"


def test_unknown_backend_says_what_to_install():
    with pytest.raises(ValueError, match="not registered"):
        torch_bridge.create_handler(torch_api.RendezvousParameters("no-such-backend", "", "run", 1, 1))


# -- a whole round through the bridge (memory backend: one process, threads) ------------------


def test_round_on_memory_backend_through_the_bridge():
    run_id = f"bridge-mem-{time.monotonic_ns()}"
    handlers = [
        torch_bridge.create_handler(
            torch_api.RendezvousParameters(
                "memory", "", run_id, 2, 3, local_addr="127.0.0.1", timeout=900, last_call_timeout="0.5"
            )
        )
        for _ in range(3)
    ]
    assert all(isinstance(h, torch_api.RendezvousHandler) for h in handlers)
    assert all(h.use_agent_store is False for h in handlers)
    assert handlers[0].get_backend() == "memory" and handlers[0].get_run_id() == run_id
    infos: list[torch_api.RendezvousInfo | None] = [None] * 3

    def join(i: int) -> None:
        infos[i] = handlers[i].next_rendezvous()

    threads = [threading.Thread(target=join, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert all(isinstance(info, torch_api.RendezvousInfo) for info in infos)
    assert sorted(info.rank for info in infos) == [0, 1, 2]
    assert {info.world_size for info in infos} == {3}
    boot = {(info.bootstrap_store_info.master_addr, info.bootstrap_store_info.master_port) for info in infos}
    assert len(boot) == 1 and next(iter(boot))[0] == "127.0.0.1"
    assert all(isinstance(info.bootstrap_store_info, torch_api.RendezvousStoreInfo) for info in infos)
    assert all(isinstance(info.store, dist.Store) for info in infos)
    infos[0].store.set("shared", "yes")
    assert infos[2].store.get("shared") == b"yes"
    assert handlers[1].num_nodes_waiting() == 0
    assert handlers[0].shutdown() is True
    assert handlers[1].is_closed()
    with pytest.raises(torch_api.RendezvousClosedError):
        handlers[1].next_rendezvous()
