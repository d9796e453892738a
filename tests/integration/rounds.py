"""Helpers of the fault tests: run a round on many handlers at once, time calls."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FuturesTimeoutError

#: Every wait of the fault tests is bounded by this (seconds).
BOUND = 30


def rendezvous(handlers, timeout=BOUND):
    """next_rendezvous on all handlers at once; their infos, in order."""
    with ThreadPoolExecutor(max_workers=len(handlers)) as pool:
        futures = [pool.submit(h.next_rendezvous) for h in handlers]
        return [f.result(timeout=timeout) for f in futures]


def assert_one_round(infos):
    """The infos are one round: ranks 0..N-1, world size N."""
    assert sorted(i.rank for i in infos) == list(range(len(infos)))
    assert {i.world_size for i in infos} == {len(infos)}


def timed(fn):
    """Run ``fn``; return (seconds, result or exception)."""
    start = time.monotonic()
    try:
        outcome = fn()
    except Exception as exc:  # the outcome is what the test looks at
        outcome = exc
    return time.monotonic() - start, outcome


def wait_until(predicate, what, timeout=BOUND, poll=0.05):
    """Poll ``predicate`` every ``poll`` s until it is true; AssertionError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(poll)


def agent(handler, deadline, poll=0.1):
    """What an elastic agent does while its round runs: poll ``num_nodes_waiting()`` every
    ``poll`` s and, once it is > 0, call ``next_rendezvous()``. Returns ``(monotonic time
    num_nodes_waiting() was first seen > 0, info)``; AssertionError when it stays 0 until
    ``deadline`` (monotonic)."""
    while handler.num_nodes_waiting() == 0:
        assert time.monotonic() < deadline, "num_nodes_waiting() stayed 0"
        time.sleep(poll)
    return time.monotonic(), handler.next_rendezvous()


def run_all(calls, timeout=BOUND):
    """Run the zero-argument ``calls`` at once in threads; their results in order, all within
    ``timeout`` s. A failure or an overrun raises at once, without waiting for the others
    (they end when their handlers are shut down)."""
    pool = ThreadPoolExecutor(max_workers=len(calls))
    try:
        deadline = time.monotonic() + timeout
        futures = [pool.submit(call) for call in calls]
        try:
            return [f.result(timeout=max(0.0, deadline - time.monotonic())) for f in futures]
        except FuturesTimeoutError:
            pending = [i for i, f in enumerate(futures) if not f.done()]
            raise AssertionError(f"calls {pending} of {len(calls)} did not return within {timeout} s") from None
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def role_of(handler):
    """Where the node of ``handler`` stands as it last saw it: ``"participant"``,
    ``"waiting"``, ``"redundant"`` or ``"none"`` (its ``standing`` when the handler has one,
    else its ``state``)."""
    standing = getattr(handler, "standing", None)
    if standing is not None:
        return standing.role.value
    state, key = handler.state, handler.node.key
    if key in state.participants:
        return "participant"
    return "waiting" if key in state.wait_list else "redundant" if key in state.redundancy_list else "none"


def round_record(handler) -> object:
    """What stays equal while a round is not rewritten: the membership's ``(incarnation,
    version)`` on the membership path (one ``round_standing``), else the state blob's token."""
    from rdzv_core.backend import AtomicMembership

    backend = handler.backend
    if isinstance(backend, AtomicMembership):
        return backend.round_standing(handler.node.key).change_id
    state = backend.get_state()
    return None if state is None else state[1]
