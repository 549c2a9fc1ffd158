"""When to try a downstream call again: tenacity's policy plus a retry budget.

tenacity supplies the policy: at most ``attempts`` tries, capped exponential
backoff with full jitter (``wait_random_exponential``: uniform in
``[0, min(cap, base * 2**n)]``, AWS's "Full Jitter"), and a retry predicate.
What it lacks is a budget shared by all calls: during an outage every call
retrying multiplies the load on a downstream that is already failing. The
:class:`RetryBudget` is a token bucket (as in Finagle and gRPC's retry
throttling): every call deposits ``ratio`` of a token, every retry spends a
whole one, so retries stay at most ``ratio`` of calls, plus a small burst.

Only idempotent calls get a policy; a ``POST`` is sent once.
"""

from __future__ import annotations

from collections.abc import Callable

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    stop_any,
    wait_random_exponential,
)
from tenacity.stop import stop_base

from service.downstream.deadline import Deadline
from service.downstream.errors import BadResponse, DownstreamTimeout

# Tokens are counted in thousandths so that ten deposits of 0.1 make exactly one.
_SCALE = 1000


class RetryBudget:
    """Retries at most ``ratio`` of calls; ``burst`` tokens may be saved up for quiet times.

    It starts empty, so a cold client cannot retry its first calls: the bound
    "retries <= ratio * calls" holds at every moment, not only on average.
    """

    def __init__(self, ratio: float, burst: int = 10) -> None:
        self._deposit = round(ratio * _SCALE)
        self._max = burst * _SCALE
        self._tokens = 0

    def on_call(self) -> None:
        self._tokens = min(self._max, self._tokens + self._deposit)

    def try_spend(self) -> bool:
        if self._tokens < _SCALE:
            return False
        self._tokens -= _SCALE
        return True

    @property
    def tokens(self) -> float:
        return self._tokens / _SCALE


def is_retryable(exc: BaseException) -> bool:
    """Transient failures only; a 404, a breaker refusal or a cancellation is final."""
    if isinstance(exc, BadResponse):
        return exc.retryable
    return isinstance(exc, DownstreamTimeout)


class _StopPastDeadline(stop_base):
    """Stop when the next backoff would sleep past the deadline (nobody would wait)."""

    def __init__(self, deadline: Deadline) -> None:
        self.deadline = deadline

    def __call__(self, retry_state: RetryCallState) -> bool:
        return retry_state.upcoming_sleep >= self.deadline.remaining()


class _StopWithoutBudget(stop_base):
    """Stop when the budget has no token; spends one otherwise.

    It must come last in ``stop_any`` (which stops at the first true one), so
    a token is spent only for a retry that is really going to happen.
    """

    def __init__(self, budget: RetryBudget) -> None:
        self.budget = budget

    def __call__(self, retry_state: RetryCallState) -> bool:
        return not self.budget.try_spend()


class RetryPolicy:
    """The retry settings of one downstream; :meth:`retrying` builds tenacity's loop per call.

    (A tenacity ``AsyncRetrying`` keeps per-run state on the instance, so each
    call needs its own.)
    """

    def __init__(self, attempts: int, budget: RetryBudget, backoff_base: float,
                 backoff_max: float, on_retry: Callable[[RetryCallState], None]) -> None:
        self.attempts = attempts
        self.budget = budget
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self._on_retry = on_retry

    def retrying(self, deadline: Deadline) -> AsyncRetrying:
        self.budget.on_call()
        return AsyncRetrying(
            stop=stop_any(stop_after_attempt(self.attempts), _StopPastDeadline(deadline),
                          _StopWithoutBudget(self.budget)),
            wait=wait_random_exponential(multiplier=self.backoff_base, max=self.backoff_max),
            retry=retry_if_exception(is_retryable),
            before_sleep=self._on_retry,
            reraise=True,
        )
