"""One retry policy for the backends' clients: tenacity, wrapped once.

A client says what a failure means (:class:`Failure`) and how to report giving up; the
policy is the same for every backend:

* :attr:`Failure.NOT_SENT` (the request never reached the server, or the server rejected it
  before running it) is always retried;
* :attr:`Failure.MAYBE_SENT` (it may have been applied: a reset or timeout after sending) is
  retried only for idempotent operations, so that e.g. ``add`` never counts twice;
* :attr:`Failure.REFUSED` (the server answered and refused: authentication, permission, a
  corrupt key) is never retried.

Pauses double from :data:`BACKOFF` ``[0]`` to ``[1]`` seconds, each jittered down to half of
it (clients that failed together do not all come back at once), and no pause runs past the
caller's deadline. Nothing here logs secrets: the messages come from the client's callbacks.
"""

from __future__ import annotations

import enum
import random
import time
from collections.abc import Callable
from typing import TypeVar

import tenacity

__all__ = ["Failure", "BACKOFF", "backoff_s", "call_with_retry"]

T = TypeVar("T")

#: First and largest pause (seconds) between attempts, before jitter.
BACKOFF = (0.05, 1.0)


class Failure(enum.Enum):
    """What a failed request means for a retry."""

    #: The request never reached the server (or was rejected before it ran): always retry.
    NOT_SENT = "not sent"
    #: The request may have been applied: retry only idempotent operations.
    MAYBE_SENT = "maybe sent"
    #: The server answered and refused: never retry.
    REFUSED = "refused"


def backoff_s(attempt: int, backoff: tuple[float, float] = BACKOFF) -> float:
    """The pause (seconds) after failed attempt number ``attempt`` (1-based): uniform in
    ``[d / 2, d]`` with ``d = min(backoff[1], backoff[0] * 2 ** (attempt - 1))``."""
    return random.uniform(0.5, 1.0) * min(backoff[1], backoff[0] * 2 ** (attempt - 1))


def call_with_retry(
    fn: Callable[[], T],
    classify: Callable[[BaseException], Failure | None],
    give_up: Callable[[BaseException, Failure, int, float], BaseException],
    *,
    deadline: float,
    idempotent: bool = True,
    cancelled: Callable[[], bool] = lambda: False,
    on_retry: Callable[[BaseException, int, float], None] | None = None,
) -> T:
    """Run ``fn()`` under the policy above.

    Args:
        fn: One attempt (no argument).
        classify: What an exception of ``fn`` means; ``None``: not a transport or server
            failure (it propagates at once, unchanged).
        give_up: ``(exception, failure, attempts, elapsed seconds) -> exception to raise``
            (chained to the last failure) when the failure is not retried or time is up.
        deadline: ``time.monotonic()`` value after which no pause starts.
        idempotent: Whether :attr:`Failure.MAYBE_SENT` failures may be retried.
        cancelled: Checked after each failure: ``True`` gives up at once (a closed client).
        on_retry: ``(exception, attempt, pause seconds)`` before each pause (for a DEBUG log).

    Raises:
        What ``give_up`` builds; whatever ``fn`` raises that ``classify`` does not know.
    """
    start = time.monotonic()
    try:
        return fn()  # the common case: one attempt, no retry machinery
    except Exception as exc:
        if classify(exc) is None:
            raise
        pending = [exc]

    def attempt() -> T:
        # tenacity's first attempt re-raises the failure already seen, so it decides about
        # it exactly as about any later one (no second call).
        if pending:
            raise pending.pop()
        return fn()

    def retryable(exc: BaseException) -> bool:
        kind = classify(exc)
        return kind is Failure.NOT_SENT or (kind is Failure.MAYBE_SENT and idempotent)

    def out_of_time(state: tenacity.RetryCallState) -> bool:
        return cancelled() or time.monotonic() + state.upcoming_sleep > deadline

    def before_sleep(state: tenacity.RetryCallState) -> None:
        if on_retry is not None and state.outcome is not None:
            on_retry(state.outcome.exception(), state.attempt_number, state.upcoming_sleep)  # type: ignore[arg-type]

    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception(retryable),
        wait=lambda state: backoff_s(state.attempt_number),
        stop=out_of_time,
        before_sleep=before_sleep,
        reraise=True,
    )
    try:
        return retrying(attempt)
    except Exception as exc:
        kind = classify(exc)
        if kind is None:
            raise
        attempts = int(retrying.statistics.get("attempt_number", 1))
        raise give_up(exc, kind, attempts, time.monotonic() - start) from exc
