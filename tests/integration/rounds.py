"""Helpers of the fault tests: run a round on many handlers at once, time calls."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

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
