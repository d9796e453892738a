"""The wait for rank 0's bootstrap address ends when the round breaks (real handlers, memory
backend, real time with short intervals): a rank 0 that hangs before publishing and is
declared dead must not hold the other nodes until the join deadline."""

from __future__ import annotations

import threading
import time

import pytest

from rdzv_core import api
from rdzv_core.api import RendezvousConnectionError, RendezvousParameters
from rdzv_core.registry import get_rendezvous_handler

pytestmark = pytest.mark.unit

BOUND = 20.0


def test_a_rank_0_declared_dead_before_publishing_sends_the_others_to_the_next_round(monkeypatch):
    params = RendezvousParameters(
        "memory", "", f"bootstrap-{time.monotonic_ns()}", 2, 2,
        join_timeout=BOUND, last_call_timeout=0.05, keep_alive_interval=0.1, keep_alive_max_attempt=2,
    )  # fmt: skip
    handlers = [get_rendezvous_handler(params) for _ in range(2)]
    events: list[str] = []
    for handler in handlers:
        handler.add_event_listener(lambda event: events.append(event.name))
    release, hung = threading.Event(), threading.Event()
    hung_in: list[str] = []
    real_build = api.RendezvousStoreInfo.build

    def build(rank, store, local_addr, server_port=None, timeout=None):
        if rank == 0 and not hung.is_set():  # the first rank 0 hangs, then loses the backend
            hung_in.append(threading.current_thread().name)
            hung.set()
            release.wait(BOUND)
            raise RendezvousConnectionError("simulated: rank 0 hung and lost the backend")
        return real_build(rank, store, local_addr, server_port, timeout)

    monkeypatch.setattr(api.RendezvousStoreInfo, "build", staticmethod(build))
    outcomes: dict[int, object] = {}

    def run(i: int) -> None:
        try:
            outcomes[i] = handlers[i].next_rendezvous()
        except Exception as exc:  # recorded; the test decides
            outcomes[i] = exc

    threads = [threading.Thread(target=run, args=(i,), name=f"node-{i}") for i in range(2)]
    start = time.monotonic()
    for t in threads:
        t.start()
    assert hung.wait(BOUND)
    # The other node sweeps the silent rank 0 (dead after 0.2 s), leaves the broken round and
    # waits in the next one: it does not sit in the bootstrap wait until the join deadline.
    deadline = time.monotonic() + BOUND
    while "round_broken" not in events:
        assert time.monotonic() < deadline, events
        time.sleep(0.01)
    release.set()
    failed = int(hung_in[0].split("-")[1])
    threads[failed].join(BOUND)
    assert isinstance(outcomes[failed], RendezvousConnectionError), outcomes
    run(failed)  # its agent tries again at once: both meet in the next round
    threads[1 - failed].join(BOUND)
    infos = [outcomes[0], outcomes[1]]
    assert sorted(info.rank for info in infos) == [0, 1] and {info.world_size for info in infos} == {2}
    assert handlers[0].standing.round == handlers[1].standing.round >= 1
    assert time.monotonic() - start < BOUND  # well before the join deadline
    for handler in handlers:
        handler.shutdown()


def _pair(name: str) -> list:
    params = RendezvousParameters(
        "memory",
        "",
        f"{name}-{time.monotonic_ns()}",
        2,
        2,
        join_timeout=BOUND,
        last_call_timeout=0.05,
        keep_alive_interval=0.5,
    )
    return [get_rendezvous_handler(params) for _ in range(2)]


def _both(handlers: list) -> list:
    outcomes: list[object] = [None, None]

    def run(i: int) -> None:
        try:
            outcomes[i] = handlers[i].next_rendezvous()
        except Exception as exc:  # recorded; the test decides
            outcomes[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(BOUND)
    return outcomes


def test_the_bootstrap_address_comes_with_the_standing_not_from_a_store_read(monkeypatch):
    """With a BootstrapRecord backend, rank 0 publishes its address in the round's record and
    the other ranks find it in their standing: nobody blocks on the round's store."""
    from rdzv_core.store import HashStore

    reads: list[list[str]] = []
    real_multi_get = HashStore.multi_get
    monkeypatch.setattr(
        HashStore,
        "multi_get",
        lambda self, keys, timeout=None: reads.append(list(keys)) or real_multi_get(self, keys, timeout),
    )
    handlers = _pair("record")
    try:
        infos = _both(handlers)
        assert sorted(info.rank for info in infos) == [0, 1], infos
        boot = {(info.bootstrap_store_info.master_addr, info.bootstrap_store_info.master_port) for info in infos}
        assert len(boot) == 1 and reads == []
        rank0 = next(info for info in infos if info.rank == 0)
        assert (
            rank0.store.get("MASTER_PORT") == str(rank0.bootstrap_store_info.master_port).encode()
        )  # torch's keys too
    finally:
        for handler in handlers:
            handler.shutdown()


def test_a_bootstrap_address_rdzv_did_not_write_is_a_state_error(monkeypatch):
    """Data from the backend is parsed, never trusted: a bad address names itself."""
    monkeypatch.setattr(api.RendezvousStoreInfo, "encode", lambda self: "not-json")
    handlers = _pair("corrupt")
    try:
        outcomes = _both(handlers)
        assert all(isinstance(o, api.RendezvousStateError) for o in outcomes), (
            outcomes
        )  # rank 0 reads back what stands too
        assert all("not-json" in str(o) for o in outcomes)
    finally:
        for handler in handlers:
            handler.shutdown()


def test_progress_is_logged_per_change_and_at_most_every_30_s_otherwise(caplog):
    """While a node waits, one INFO line per change of the round and one per PROGRESS_EVERY
    seconds otherwise: joined/needed, the last call."""
    from rdzv_core.backend import Role, Standing
    from rdzv_core.dynamic.clock import Clock
    from rdzv_core.dynamic.handler import PROGRESS_EVERY, DynamicRendezvousHandler
    from rdzv_core.memory import create_backend

    class Manual(Clock):
        now = 100.0

        def monotonic(self) -> float:
            return self.now

    clock = Manual()
    params = RendezvousParameters("memory", "", f"progress-{time.monotonic_ns()}", 3, 4)
    backend, store = create_backend(params)
    handler = DynamicRendezvousHandler.from_backend(params.run_id, store, backend, 3, 4, "127.0.0.1", clock=clock)

    def standing(version: int, participants: int, deadline_in: float | None = None) -> Standing:
        return Standing("inc", version, 0, False, False, Role.PARTICIPANT, None, 0, participants, 1, 0, deadline_in)

    with caplog.at_level("INFO", logger="rdzv_core.dynamic"):
        handler._on_standing(standing(1, 1))
        handler._on_standing(standing(1, 2))  # same round state: quiet
        clock.now += PROGRESS_EVERY
        handler._on_standing(standing(1, 2))  # 30 s later: again
        handler._on_standing(standing(2, 3, deadline_in=4.5))  # the last call started: a change
    lines = [r.getMessage() for r in caplog.records if "waits for round" in r.getMessage()]
    assert len(lines) == 3, lines
    assert "1 joined (min_nodes=3, max_nodes=4), 1 waiting; 2 more needed" in lines[0]
    assert "2 joined" in lines[1] and "the last call ends in 4.5 s" in lines[2]


def test_the_state_path_logs_the_same_progress_lines(caplog):
    """A backend with only torch's contract (whole-state compare-and-set): the waiting node
    logs joined/needed too, then both nodes get ranks."""
    import threading
    from datetime import timedelta

    from rdzv_core.dynamic.handler import DynamicRendezvousHandler
    from rdzv_core.dynamic.settings import RendezvousTimeout
    from rdzv_core.memory import create_backend
    from tests.backends import StateOnlyBackend

    params = RendezvousParameters("memory", "", f"state-progress-{time.monotonic_ns()}", 2, 2, last_call_timeout=0.1)
    backend, store = create_backend(params)
    plain = StateOnlyBackend(backend)
    handlers = [
        DynamicRendezvousHandler.from_backend(
            params.run_id,
            store,
            plain,
            2,
            2,
            "127.0.0.1",
            RendezvousTimeout(join=timedelta(seconds=20), last_call=timedelta(seconds=0.1)),
        )
        for _ in range(2)
    ]
    results: list = []
    try:
        with caplog.at_level("INFO", logger="rdzv_core.dynamic"):
            first = threading.Thread(target=lambda: results.append(handlers[0].next_rendezvous()), daemon=True)
            first.start()
            deadline = time.monotonic() + 10
            while not any("1 more needed" in r.getMessage() for r in caplog.records) and time.monotonic() < deadline:
                time.sleep(0.01)
            results.append(handlers[1].next_rendezvous())
            first.join(10)
        lines = [r.getMessage() for r in caplog.records if "waits for round" in r.getMessage()]
        assert any("1 joined (min_nodes=2, max_nodes=2), 0 waiting; 1 more needed" in line for line in lines), lines
        assert sorted(info.rank for info in results) == [0, 1]
    finally:
        for handler in handlers:
            handler.shutdown()


def test_state_standing_of_each_role():
    from rdzv_core.backend import Role
    from rdzv_core.dynamic.ops import state_standing
    from rdzv_core.state import RendezvousState

    state = RendezvousState(run_id="r", round=2, participants={"a": 0, "b": 0}, wait_list=["c"], deadline=110.0)
    assert state_standing(state, "a", 100.0).role is Role.PARTICIPANT
    assert state_standing(state, "c", 100.0).role is Role.WAITING
    assert state_standing(state, "z", 100.0).role is Role.NONE
    standing = state_standing(state, "a", 100.0)
    assert (standing.round, standing.participants, standing.waiting, standing.deadline_in) == (2, 2, 1, 10.0)
    joined = RendezvousState(run_id="r", round=2, participants={"a": 0}, wait_list=["c"], deadline=110.0)
    assert state_standing(joined, "a", 100.0).version == standing.version  # a join is not a change
