"""The one retry policy (rdzv_core.retry): what is retried, for how long, and what is raised."""

from __future__ import annotations

import time

import pytest

from rdzv_core.retry import BACKOFF, Failure, backoff_s, call_with_retry

pytestmark = pytest.mark.unit


class Boom(Exception):
    def __init__(self, failure: Failure | None) -> None:
        super().__init__(failure)
        self.failure = failure


class GaveUp(Exception):
    pass


def run(failures: list[Failure | None], *, idempotent: bool = True, budget: float = 5.0, cancelled=lambda: False):
    """Fail with ``failures`` in turn, then succeed; return (result or exception, attempts)."""
    calls: list[int] = []
    seen: list[tuple[Failure, int]] = []

    def fn() -> str:
        calls.append(1)
        if len(calls) <= len(failures):
            raise Boom(failures[len(calls) - 1])
        return "ok"

    def give_up(exc, failure, attempts, elapsed):
        seen.append((failure, attempts))
        return GaveUp(f"{failure.value} after {attempts}")

    try:
        result: object = call_with_retry(fn, lambda exc: exc.failure if isinstance(exc, Boom) else None, give_up,
                                         deadline=time.monotonic() + budget, idempotent=idempotent, cancelled=cancelled)  # fmt: skip
    except Exception as exc:  # the test looks at it
        result = exc
    return result, len(calls), seen


def test_not_sent_is_retried_until_it_succeeds():
    assert run([Failure.NOT_SENT, Failure.NOT_SENT])[:2] == ("ok", 3)


def test_maybe_sent_is_retried_only_when_idempotent():
    assert run([Failure.MAYBE_SENT])[:2] == ("ok", 2)
    result, calls, seen = run([Failure.MAYBE_SENT], idempotent=False)
    assert isinstance(result, GaveUp) and calls == 1 and seen == [(Failure.MAYBE_SENT, 1)]
    assert isinstance(result.__cause__, Boom)


def test_refused_is_never_retried():
    result, calls, seen = run([Failure.REFUSED, Failure.NOT_SENT])
    assert isinstance(result, GaveUp) and calls == 1 and seen == [(Failure.REFUSED, 1)]


def test_unknown_exceptions_propagate_unchanged_at_once():
    result, calls, seen = run([None])
    assert type(result) is Boom and calls == 1 and seen == []


def test_no_pause_runs_past_the_deadline():
    started = time.monotonic()
    result, calls, seen = run([Failure.NOT_SENT] * 1000, budget=0.3)
    elapsed = time.monotonic() - started
    assert isinstance(result, GaveUp) and seen[0][1] == calls >= 2
    assert elapsed < 0.3 + 0.05  # the last pause that would end past the deadline is not taken


def test_a_cancelled_client_gives_up_after_the_failure():
    result, calls, _ = run([Failure.NOT_SENT] * 10, cancelled=lambda: True)
    assert isinstance(result, GaveUp) and calls == 1


def test_backoff_doubles_with_jitter_down_to_half_and_is_capped():
    for attempt in range(1, 12):
        full = min(BACKOFF[1], BACKOFF[0] * 2 ** (attempt - 1))
        pauses = [backoff_s(attempt) for _ in range(50)]
        assert all(full / 2 <= p <= full for p in pauses)
