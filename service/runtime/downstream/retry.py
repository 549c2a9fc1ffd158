"""When to try a downstream call again: attempts, full-jitter backoff, a retry budget.

The policy: at most ``attempts`` tries of an idempotent call, only for
transient failures (:func:`is_retryable`), sleeping a capped exponential
backoff with full jitter between them (uniform in ``[0, min(cap, base *
2**(n-1))]``, AWS's "Full Jitter", which spreads synchronized clients
best), and never sleeping past the deadline. On top of it, a budget shared
by all calls: during an outage every call retrying multiplies the load on a
downstream that is already failing. The :class:`RetryBudget` is a token
bucket (as in Finagle and gRPC's retry throttling): every call deposits
``ratio`` of a token, every retry spends a whole one, so retries stay at
most ``ratio`` of calls. A ``POST`` never gets here: it is sent once.

Why not tenacity: its ``AsyncRetrying`` cost about 150 us per call here
(a retrying object, futures and ``inspect`` checks per call) on a path whose
HTTP request costs less than that, and the policy is the loop below. Its
``wait_random_exponential`` is the same formula as :func:`full_jitter`.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

from service.runtime.downstream.deadline import Deadline
from service.runtime.downstream.errors import BadResponse, DownstreamTimeout

T = TypeVar("T")

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


def full_jitter(
    attempt: int, base: float, cap: float, uniform: Callable[[float, float], float] = random.uniform
) -> float:
    """The sleep after failed attempt ``attempt`` (1-based)."""
    return uniform(0.0, min(cap, base * 2 ** (attempt - 1)))


class RetryPolicy:
    """The retry settings of one downstream, and the loop that applies them."""

    def __init__(
        self,
        attempts: int,
        budget: RetryBudget,
        backoff_base: float,
        backoff_max: float,
        on_retry: Callable[[int, float], None],
    ) -> None:
        self.attempts = attempts
        self.budget = budget
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self._on_retry = on_retry

    async def run(self, call: Callable[[], Awaitable[T]], deadline: Deadline) -> T:
        """``await call()`` until it succeeds, fails for good, or the policy says stop."""
        self.budget.on_call()
        attempt = 1
        while True:
            try:
                return await call()
            except Exception as exc:
                if attempt >= self.attempts or not is_retryable(exc):
                    raise
                delay = full_jitter(attempt, self.backoff_base, self.backoff_max)
                # The budget is asked last, so a token is spent only on a retry
                # that is really going to happen.
                if delay >= deadline.remaining() or not self.budget.try_spend():
                    raise
            self._on_retry(attempt, delay)
            await asyncio.sleep(delay)
            attempt += 1
