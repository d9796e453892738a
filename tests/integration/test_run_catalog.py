"""RunCatalog on real servers: ``rdzv status --all`` lists the runs of a server and ``rdzv reset``
deletes one run's keys (and only that run's), so a closed run id can be reused at once."""

from __future__ import annotations

import re
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from rdzv_core.api import RendezvousClosedError, RendezvousParameters
from rdzv_core.backend import RunCatalog
from rdzv_core.registry import get_rendezvous_handler
from rdzv_core.status import ResetRefused, collect_all_status, collect_status, open_backend, reset_run
from tests.fixtures_etcd import etcd_params

pytestmark = pytest.mark.integration

FAST = {"join_timeout": 20, "last_call_timeout": 0.2, "keep_alive_interval": 0.5, "close_timeout": 5}
Params = Callable[[str], RendezvousParameters]


@pytest.fixture(params=["redis", "redis-cluster", "etcd-v3", "etcd-v2"])
def params_of(request: pytest.FixtureRequest) -> Params:
    if request.param == "redis":
        server = request.getfixturevalue("redis_server")
        return lambda run_id: RendezvousParameters("redis", server.endpoint, run_id, 1, 1, **FAST)
    if request.param == "redis-cluster":  # SCAN over every master; each run's keys share one slot
        cluster = request.getfixturevalue("redis_cluster")
        return lambda run_id: RendezvousParameters("redis", cluster.endpoint, run_id, 1, 1, cluster="true", **FAST)
    server = request.getfixturevalue("etcd_server")
    api = request.param.split("-")[1]
    return lambda run_id: etcd_params(server, api, run_id, 1, 1, **FAST)


@pytest.fixture
def handlers() -> Iterator[list[Any]]:
    made: list[Any] = []
    yield made
    for handler in made:
        handler.shutdown()


def _joined(params: RendezvousParameters, handlers: list[Any]) -> Any:
    handler = get_rendezvous_handler(params)
    handlers.append(handler)
    info = handler.next_rendezvous()
    assert (info.rank, info.world_size) == (0, 1)
    return handler


def _ids(tag: str) -> tuple[str, str]:
    # 'a*' as a literal: a glob that is not escaped would also match the keys of 'ab...'.
    return f"cat-{tag}*[x]", f"cat-{tag}*[x]b"


def test_the_catalog_lists_both_runs_and_which_is_closed(params_of: Params, handlers: list[Any]) -> None:
    tag = uuid.uuid4().hex[:8]
    closed_id, live_id = _ids(tag)
    _joined(params_of(closed_id), handlers).set_closed()
    _joined(params_of(live_id), handlers)
    with open_backend(params_of("-")) as session:
        assert isinstance(session.backend, RunCatalog)
        assert {closed_id, live_id} <= set(session.backend.list_run_ids())
    statuses = {s.run_id: s for s in collect_all_status(params_of("-"))}
    assert statuses[closed_id].closed and not statuses[live_id].closed
    assert statuses[live_id].complete and statuses[live_id].world_size == 1


def test_reset_frees_a_closed_run_id_and_leaves_the_others(params_of: Params, handlers: list[Any]) -> None:
    tag = uuid.uuid4().hex[:8]
    closed_id, live_id = _ids(tag)
    old = _joined(params_of(closed_id), handlers)
    old.set_closed()
    _joined(params_of(live_id), handlers)
    late = get_rendezvous_handler(params_of(closed_id))
    handlers.append(late)
    with pytest.raises(RendezvousClosedError, match=re.escape(f"rdzv reset --run-id {closed_id}")):
        late.next_rendezvous()

    assert reset_run(params_of(closed_id)) > 0
    assert not collect_status(params_of(closed_id)).exists
    assert collect_status(params_of(live_id)).complete  # its neighbour by glob is untouched
    assert reset_run(params_of(closed_id)) == 0  # nothing left
    _joined(params_of(closed_id), handlers)  # the id is free again: a fresh rendezvous forms


def test_a_live_run_is_reset_only_with_force(params_of: Params, handlers: list[Any]) -> None:
    run_id = f"cat-live-{uuid.uuid4().hex[:8]}"
    _joined(params_of(run_id), handlers)
    with pytest.raises(ResetRefused, match="--force"):
        reset_run(params_of(run_id))
    assert collect_status(params_of(run_id)).exists
    assert reset_run(params_of(run_id), force=True) > 0
    assert not collect_status(params_of(run_id)).exists


def _rdzv(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rdzv_core.cli", *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_the_cli_lists_and_resets_closed_runs(redis_server: Any, handlers: list[Any]) -> None:
    endpoint = redis_server.endpoint
    closed_id, live_id = (f"cli-cat-{uuid.uuid4().hex[:8]}-{i}" for i in range(2))
    params = {i: RendezvousParameters("redis", endpoint, i, 1, 1, **FAST) for i in (closed_id, live_id)}
    _joined(params[closed_id], handlers).set_closed()
    _joined(params[live_id], handlers)

    listing = _rdzv("status", "--endpoint", endpoint, "--all")
    assert listing.returncode == 0, listing.stderr
    lines = {line.split()[0]: line for line in listing.stdout.splitlines()[1:]}
    assert "closed" in lines[closed_id] and "complete (1)" in lines[live_id]

    reset = _rdzv("reset", "--endpoint", endpoint, "--all-closed")
    assert reset.returncode == 0, reset.stderr
    assert f"Reset the rendezvous '{closed_id}'" in reset.stdout and live_id not in reset.stdout
    assert not collect_status(params[closed_id]).exists and collect_status(params[live_id]).exists

    refused = _rdzv("reset", "--endpoint", endpoint, "--run-id", live_id)
    assert refused.returncode == 1 and "--force" in refused.stderr
    both = _rdzv("reset", "--endpoint", endpoint, "--run-id", live_id, "--all-closed")
    assert both.returncode == 2


@pytest.fixture(params=["redis", "etcd-v3", "etcd-v2"])
def bounded_params(request: pytest.FixtureRequest) -> Callable[[str, int, int], RendezvousParameters]:
    conf = {**FAST, "last_call_timeout": 30}
    if request.param == "redis":
        server = request.getfixturevalue("redis_server")
        return lambda run_id, lo, hi: RendezvousParameters("redis", server.endpoint, run_id, lo, hi, **conf)
    server = request.getfixturevalue("etcd_server")
    api = request.param.split("-")[1]
    return lambda run_id, lo, hi: etcd_params(server, api, run_id, lo, hi, **conf)


def test_status_shows_the_bounds_what_is_needed_and_the_last_call(bounded_params: Any) -> None:
    """A forming round of 1 node with min 2 needs 1 more; with 2 the 30 s last call runs."""
    import threading

    from rdzv_core.status import format_status_table

    run_id = f"bounds-{uuid.uuid4().hex[:8]}"
    made = [get_rendezvous_handler(bounded_params(run_id, 2, 3)) for _ in range(2)]
    threads = []
    try:
        for handler in made:
            threads.append(threading.Thread(target=_try_join, args=(handler,), daemon=True))
            threads[-1].start()
            expected = len(threads)
            # On etcd-v3 the last call's deadline is written by the summary transition that
            # follows the second join (another request): wait for it, not only for the member.
            status = _wait_for(
                lambda: collect_status(bounded_params(run_id, 1, 1)),
                lambda s, n=expected: len(s.participants) == n and (n == 1 or s.last_call_at is not None),
            )
            assert (status.min_nodes, status.max_nodes, status.last_call_timeout) == (2, 3, 30)
            if expected == 1:
                assert status.needed == 1 and status.last_call_at is None
                assert "1 more needed" in format_status_table(status)
            else:
                assert status.needed == 0 and status.last_call_at is not None and 20 < status.last_call_in <= 30
                assert "last call:   30 s, ends at" in format_status_table(status)
    finally:
        made[0].set_closed()
        for thread in threads:
            thread.join(10)
        for handler in made:
            handler.shutdown()


def _try_join(handler: Any) -> None:
    try:
        handler.next_rendezvous()
    except RendezvousClosedError:
        pass


def _wait_for(read: Callable[[], Any], ok: Callable[[Any], bool], timeout: float = 15) -> Any:
    import time

    deadline = time.monotonic() + timeout
    while True:
        value = read()
        if ok(value) or time.monotonic() > deadline:
            assert ok(value), value
            return value
        time.sleep(0.05)


def test_a_corrupt_run_is_listed_as_unreadable_and_hides_no_other(
    redis_server: Any, redis_raw: Any, handlers: list[Any]
) -> None:
    from rdzv_core.status import format_runs_table

    good, bad = (f"cat-{name}-{uuid.uuid4().hex[:8]}" for name in ("good", "bad"))
    redis_raw.hset(f"rdzv:{{{bad}}}:round", mapping={"inc": "x", "ver": "not-a-number"})
    params = lambda run_id: RendezvousParameters("redis", redis_server.endpoint, run_id, 1, 1, **FAST)  # noqa: E731
    _joined(params(good), handlers)
    statuses = {s.run_id: s for s in collect_all_status(params("-"))}
    assert statuses[good].complete and statuses[good].error is None
    assert statuses[bad].error is not None and "corrupt" in statuses[bad].error
    assert "unreadable" in next(line for line in format_runs_table([statuses[bad]]).splitlines() if bad in line)


@pytest.mark.parametrize("api", ["v2", "v3"])
def test_a_corrupt_etcd_run_is_listed_as_unreadable(etcd_server: Any, api: str, handlers: list[Any]) -> None:
    # Opening an etcd backend probes the run's state key, so the corrupt run fails at the
    # open, not only at the read: ``status --all`` must still list it and the others.
    from rdzv_core.status import format_runs_table
    from rdzv_etcd.backend import create_backend
    from tests.fixtures_etcd import raw_put

    good, bad = (f"cat-{name}-{uuid.uuid4().hex[:8]}" for name in ("good", "bad"))
    _joined(etcd_params(etcd_server, api, good, 1, 1, **FAST), handlers)
    backend, _ = create_backend(etcd_params(etcd_server, api, good, 1, 1, **FAST))
    # v2 keeps the whole state blob; v3 reads its status from the membership summary.
    key = backend.keys.state if api == "v2" else backend.membership.summary_key
    state_key = key.replace(good, bad)
    backend.close()
    raw_put(etcd_server, api, state_key, b"\xff\xfe garbage \x00")
    statuses = {s.run_id: s for s in collect_all_status(etcd_params(etcd_server, api, "-", 1, 1, **FAST))}
    assert statuses[good].complete and statuses[good].error is None
    assert statuses[bad].error is not None
    assert "unreadable" in next(line for line in format_runs_table([statuses[bad]]).splitlines() if bad in line)
