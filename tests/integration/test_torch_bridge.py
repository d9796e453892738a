"""rdzv and torch together on a real Redis: rdzv handlers behind torch's API (what torchrun
sees), and rdzv backends behind torch's own DynamicRendezvousHandler."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

torch = pytest.importorskip("torch", reason="torch is not installed (pip install 'rdzv[torch]')")

import torch.distributed as dist  # noqa: E402
from torch.distributed.elastic.rendezvous import api as torch_api  # noqa: E402
from torch.distributed.elastic.rendezvous import dynamic_rendezvous as torch_dynamic  # noqa: E402
from torch.distributed.elastic.rendezvous.registry import get_rendezvous_handler  # noqa: E402

from rdzv_core.store import HashStore  # noqa: E402
from rdzv_core.store_backend import StoreRendezvousBackend  # noqa: E402
from rdzv_core.torch_bridge import TorchRendezvousHandler, TorchStore  # noqa: E402

pytestmark = pytest.mark.integration

#: Short timeouts for the handlers of these tests (``--rdzv-conf`` form: strings).
FAST = {
    "last_call_timeout": "0.5",
    "join_timeout": "30",
    "keep_alive_interval": "1",
    "close_timeout": "10",
    "retry_timeout": "5",
}


def run_all(calls: list[Callable[[], Any]], timeout: float = 60) -> list[Any]:
    """Run ``calls`` in threads; return their results (re-raising the first error)."""
    results: list[Any] = [None] * len(calls)
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            results[i] = calls[i]()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(len(calls))]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in threads), "a thread did not finish in time"
    if errors:
        raise errors[0]
    return results


@pytest.fixture
def torch_params(redis_server, redis_run_id):
    def make(
        min_nodes: int = 1, max_nodes: int = 1, endpoint: str | None = None, **config: Any
    ) -> torch_api.RendezvousParameters:
        merged = {"timeout": 900, **FAST, **config}  # torchrun always adds 'timeout'
        return torch_api.RendezvousParameters(
            "redis",
            endpoint or redis_server.endpoint,
            redis_run_id,
            min_nodes,
            max_nodes,
            local_addr="127.0.0.1",
            **merged,
        )

    return make


@pytest.fixture
def handlers():
    made: list[torch_api.RendezvousHandler] = []
    yield made
    for handler in made:
        try:
            handler.shutdown()
        except Exception:
            pass


# -- rdzv behind torch's API --------------------------------------------------------------------


@pytest.mark.parametrize("form", ["host:port", "url"])
def test_torch_registry_creates_bridged_redis_handlers(torch_params, handlers, redis_server, form):
    endpoint = redis_server.endpoint if form == "host:port" else f"redis://{redis_server.endpoint}/0"
    handler = get_rendezvous_handler(torch_params(endpoint=endpoint))
    handlers.append(handler)
    assert isinstance(handler, TorchRendezvousHandler)
    assert handler.get_backend() == "redis"
    assert handler.use_agent_store is False
    info = handler.next_rendezvous()
    assert (info.rank, info.world_size) == (0, 1)
    assert info.bootstrap_store_info.master_addr == "127.0.0.1"
    assert 0 < info.bootstrap_store_info.master_port < 65536


def test_round_then_scale_up_on_redis(torch_params, handlers):
    params = torch_params(min_nodes=2, max_nodes=3)
    first = [get_rendezvous_handler(params) for _ in range(2)]
    handlers.extend(first)
    infos = run_all([h.next_rendezvous for h in first])
    assert sorted(i.rank for i in infos) == [0, 1] and {i.world_size for i in infos} == {2}
    boot = {(i.bootstrap_store_info.master_addr, i.bootstrap_store_info.master_port) for i in infos}
    assert len(boot) == 1
    # The round's store is the Redis store, shared by the nodes and usable by torch's C++.
    infos[0].store.set("hello", "from rank0")
    assert infos[1].store.get("hello") == b"from rank0"
    prefixed = dist.PrefixStore("agent", infos[1].store)
    prefixed.set("k", "v")
    assert infos[0].store.get("agent/k") == b"v"

    # A third node arrives: it waits, the others see it and re-rendezvous (as the agent does).
    late = get_rendezvous_handler(params)
    handlers.append(late)
    joined: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: joined.setdefault("info", late.next_rendezvous()), daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while first[0].num_nodes_waiting() == 0:
        assert time.monotonic() < deadline, "the waiting node was never seen"
        time.sleep(0.05)
    assert first[1].num_nodes_waiting() == 1
    infos = run_all([h.next_rendezvous for h in first])
    thread.join(30)
    infos.append(joined["info"])
    assert sorted(i.rank for i in infos) == [0, 1, 2] and {i.world_size for i in infos} == {3}
    assert len({i.bootstrap_store_info.master_port for i in infos}) == 1
    assert first[0].num_nodes_waiting() == 0


def test_closed_and_timeout_are_torch_exceptions(torch_params, handlers):
    lone = get_rendezvous_handler(torch_params(min_nodes=2, max_nodes=2, join_timeout="1"))
    handlers.append(lone)
    start = time.monotonic()
    with pytest.raises(torch_api.RendezvousTimeoutError):
        lone.next_rendezvous()
    assert time.monotonic() - start < 15
    closer = get_rendezvous_handler(torch_params(min_nodes=2, max_nodes=2))
    handlers.append(closer)
    closer.set_closed()
    assert lone.is_closed()
    with pytest.raises(torch_api.RendezvousClosedError):
        lone.next_rendezvous()


def test_rdzv_conf_password_passes_through(own_redis_server, redis_run_id, handlers):
    server = own_redis_server(password="s3cret-pw")

    def params(**config: Any) -> torch_api.RendezvousParameters:
        return torch_api.RendezvousParameters(
            "redis", server.endpoint, redis_run_id, 1, 1, local_addr="127.0.0.1", timeout=900, **{**FAST, **config}
        )

    handler = get_rendezvous_handler(params(password="s3cret-pw"))
    handlers.append(handler)
    assert handler.next_rendezvous().world_size == 1
    with pytest.raises(torch_api.RendezvousConnectionError) as info:
        bad = get_rendezvous_handler(params(password="wrong", retry_timeout="0.5"))
        handlers.append(bad)
        bad.next_rendezvous()
    assert "s3cret-pw" not in str(info.value) and "wrong" not in str(info.value)


def test_unreachable_redis_is_a_torch_connection_error(torch_params, handlers):
    from rdzv_core.utils import get_free_port

    start = time.monotonic()
    with pytest.raises(torch_api.RendezvousConnectionError, match="127.0.0.1"):
        handler = get_rendezvous_handler(
            torch_params(endpoint=f"127.0.0.1:{get_free_port()}", retry_timeout="0.5", connect_timeout="0.5")
        )
        handlers.append(handler)
        handler.next_rendezvous()
    assert time.monotonic() - start < 20


# -- rdzv backends behind torch's DynamicRendezvousHandler --------------------------------------


def _torch_round(make_handler: Callable[[], Any], nodes: int) -> list[Any]:
    made = [make_handler() for _ in range(nodes)]
    try:
        infos = run_all([h.next_rendezvous for h in made], timeout=90)
        assert sorted(i.rank for i in infos) == list(range(nodes))
        assert {i.world_size for i in infos} == {nodes}
        assert len({(i.bootstrap_store_info.master_addr, i.bootstrap_store_info.master_port) for i in infos}) == 1
        assert made[0].num_nodes_waiting() == 0
        return infos
    finally:
        for h in made:
            h.shutdown()


def _torch_timeout() -> torch_dynamic.RendezvousTimeout:
    return torch_dynamic.RendezvousTimeout(
        join=timedelta(seconds=60), last_call=timedelta(seconds=1), close=timedelta(seconds=10)
    )


def test_torch_dynamic_handler_on_redis_backend(redis_backend_factory, redis_run_id):
    """torch pickles its own state into our backend; we store it as opaque bytes."""
    backend, store = redis_backend_factory(redis_run_id)
    torch_store = TorchStore(store)

    def make() -> Any:
        return torch_dynamic.DynamicRendezvousHandler.from_backend(
            redis_run_id,
            torch_store,
            backend,
            min_nodes=2,
            max_nodes=3,
            local_addr="127.0.0.1",
            timeout=_torch_timeout(),
        )

    infos = _torch_round(make, 3)
    assert infos[0].store.get("MASTER_ADDR") == b"127.0.0.1"  # torch's PrefixStore over our store
    state = backend.get_state()
    assert state is not None and state[0][:1] == b"\x80"  # a pickle: torch's business, opaque to us
    assert make().is_closed()


def test_torch_dynamic_handler_on_store_backend_over_hash_store():
    run_id = f"torch-hash-{time.monotonic_ns()}"
    base = HashStore(timeout=30)
    backend = StoreRendezvousBackend(base, run_id)
    torch_store = TorchStore(base)

    def make() -> Any:
        return torch_dynamic.DynamicRendezvousHandler.from_backend(
            run_id, torch_store, backend, min_nodes=2, max_nodes=3, local_addr="127.0.0.1", timeout=_torch_timeout()
        )

    _torch_round(make, 3)


# -- etcd-v3 ------------------------------------------------------------------------------------


def test_bridged_etcd_v3_round_and_torch_handler_on_etcd_v3_backend(etcd_server, handlers):
    from rdzv_etcd.backend import create_backend
    from tests.fixtures_etcd import etcd_params, unique_run_id

    run_id = unique_run_id("torch")
    params = torch_api.RendezvousParameters(
        "etcd-v3",
        etcd_server.endpoint,
        run_id,
        2,
        2,
        local_addr="127.0.0.1",
        timeout=900,
        **{**FAST, "read_timeout": "10"},
    )
    pair = [get_rendezvous_handler(params) for _ in range(2)]
    handlers.extend(pair)
    assert {h.get_backend() for h in pair} == {"etcd-v3"}
    infos = run_all([h.next_rendezvous for h in pair])
    assert sorted(i.rank for i in infos) == [0, 1] and {i.world_size for i in infos} == {2}
    infos[0].store.set("k", "v")
    assert infos[1].store.get("k") == b"v"

    other = unique_run_id("torch-own")
    backend, store = create_backend(etcd_params(etcd_server, "v3", other))
    torch_store = TorchStore(store)
    try:
        _torch_round(
            lambda: torch_dynamic.DynamicRendezvousHandler.from_backend(
                other, torch_store, backend, min_nodes=2, max_nodes=3, local_addr="127.0.0.1", timeout=_torch_timeout()
            ),
            3,
        )
    finally:
        backend.close()
