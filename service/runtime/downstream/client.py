"""One downstream's HTTP client: session, deadline, retries, breaker, bulkhead, metrics.

A call is layered from the outside in:

1. retry (idempotent calls only; :mod:`.retry`), each attempt then
2. asks the circuit breaker (:mod:`.breaker`): refused at once while open,
3. takes a bulkhead slot (:mod:`.bulkhead`), waiting for one while the
   deadline leaves time for a call,
4. sends the request with what is left of the deadline, as a timeout and as
   the ``X-Request-Deadline-Ms`` header, with the request's ``X-Request-ID``,
5. reads at most ``max_response_bytes`` and parses JSON; anything unusable
   becomes :class:`BadResponse` (a 502 upstream), never an unexpected error.

With tracing on (``service.runtime.tracing``; the registry sets
:attr:`DownstreamClient.tracing`) a call is a client span, each attempt a
child span whose context goes downstream as ``traceparent``; circuit-breaker
and bulkhead refusals are events on the call's span, and a call cancelled by
its caller (the summary's sibling 404) ends with ``downstream.outcome =
cancelled``. These spans are written here rather than by OpenTelemetry's
aiohttp-client instrumentation: that one sees single HTTP requests (not the
call, its retries, or why the breaker refused) and adds aiohttp's trace
signals to every request of the session.

One ``aiohttp.ClientSession`` per downstream, with its own connection pool
(aiohttp's default is one 100-connection pool for all hosts and a 300 s
total timeout; neither fits a service with deadlines). The pool is sized
like the bulkhead (``pool_size``), so a call that holds a slot never waits
again for a connection. Cancellation is never
swallowed: a cancelled call counts as "cancelled", frees its breaker ticket
and bulkhead slot, and the exception goes on.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Mapping
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson

from service.runtime.downstream.breaker import CircuitBreaker
from service.runtime.downstream.bulkhead import Bulkhead
from service.runtime.downstream.deadline import DEADLINE_HEADER, Deadline
from service.runtime.downstream.errors import (
    BadResponse,
    CircuitOpen,
    DownstreamError,
    DownstreamNotFound,
    DownstreamTimeout,
    DownstreamUnavailable,
)
from service.runtime.downstream.retry import RetryBudget, RetryPolicy
from service.runtime.downstream.traced import traced_call
from service.runtime.http.compat import disable_connection_resend
from service.runtime.metrics import Metrics
from service.runtime.requestid import REQUEST_ID_HEADER, request_id_var
from service.runtime.settings import DownstreamService

if TYPE_CHECKING:
    from opentelemetry.trace import Span

    from service.runtime.tracing.core import Tracing

_OUTCOMES = ("ok", "error", "timeout", "cancelled", "rejected")


class DownstreamClient:
    """The resilient JSON-over-HTTP client of one named downstream."""

    # Set by the registry while tracing is on: calls and attempts are then spans.
    tracing: Tracing | None = None

    def __init__(self, name: str, settings: DownstreamService, metrics: Metrics) -> None:
        self.name = name
        self.base_url = settings.url.rstrip("/")
        self.settings = settings
        self.breaker = CircuitBreaker(settings.breaker_failures, settings.breaker_reset_seconds)
        self.bulkhead = Bulkhead(name, settings.bulkhead)
        self.retry = RetryPolicy(
            settings.retry_attempts,
            RetryBudget(settings.retry_budget_ratio),
            settings.retry_backoff_seconds,
            settings.retry_backoff_max_seconds,
            on_retry=self._count_retry,
        )
        self._session: aiohttp.ClientSession | None = None
        self._outcomes = {o: metrics.downstream_requests.labels(name, o) for o in _OUTCOMES}
        self._duration = metrics.downstream_duration.labels(name)
        self._retries = metrics.downstream_retries.labels(name)
        self._metrics = metrics
        metrics.downstream_circuit_open.set_function(lambda: float(self.breaker.is_open()), name)

    # -- lifecycle ----------------------------------------------------------
    async def start(self) -> None:
        s = self.settings
        connector = aiohttp.TCPConnector(limit=s.pool_size, limit_per_host=s.pool_size)
        self._session = aiohttp.ClientSession(
            connector=connector,
            # Per-call totals come from the deadline; these bound what is left.
            timeout=aiohttp.ClientTimeout(
                total=s.deadline_seconds, connect=s.connect_timeout, sock_connect=s.connect_timeout
            ),
            headers={"Accept": "application/json"},
            raise_for_status=False,
        )
        # aiohttp silently resends an idempotent request once when its pooled
        # connection fails (RFC 9112 9.3.1). Our retry policy and budget must see
        # every retry, or a reset storm doubles the load on a failing downstream.
        disable_connection_resend(self._session)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        self._metrics.downstream_circuit_open.remove_function(self.name)

    # -- calls --------------------------------------------------------------
    def refusing(self) -> bool:
        """True while calls are refused at once, without trying (the circuit is open).

        A caller with many calls to make (a pipeline batch) asks this once and
        skips them, rather than raising and catching a ``CircuitOpen`` per call
        at the very moment the service should stay fast.
        """
        return self.breaker.refusing()

    async def get_json(self, path: str, deadline: Deadline, what: str = "resource") -> Any:
        """``GET`` (idempotent, so retried under the policy and the budget)."""
        if self.tracing is not None:
            tries = 0

            def attempt() -> Awaitable[Any]:
                nonlocal tries
                tries += 1
                return self.attempt("GET", path, deadline, what=what, resend_count=tries - 1)

            return await traced_call(
                self.tracing,
                self.name,
                "GET",
                self.base_url + path,
                lambda: self.retry.run(attempt, deadline),
            )
        return await self.retry.run(
            lambda: self.attempt("GET", path, deadline, what=what), deadline
        )

    async def post_json(
        self, path: str, body: Any, deadline: Deadline, what: str = "resource"
    ) -> Any:
        """``POST``: not idempotent, so exactly one attempt whatever happens."""
        if self.tracing is not None:
            return await traced_call(
                self.tracing,
                self.name,
                "POST",
                self.base_url + path,
                lambda: self.attempt("POST", path, deadline, body=body, what=what),
            )
        return await self.attempt("POST", path, deadline, body=body, what=what)

    async def attempt(
        self,
        method: str,
        path: str,
        deadline: Deadline,
        *,
        body: Any = None,
        what: str = "resource",
        resend_count: int = 0,
    ) -> Any:
        """One try: breaker, bulkhead, request, metrics (and its span, tracing on)."""
        ticket = self.breaker.allow()
        if ticket is None:
            self._outcomes["rejected"].value += 1
            refused = CircuitOpen(self.name, self.breaker.retry_after())
            if self.tracing is not None:
                self.tracing.event(refused.reason, self.name, refused.retry_after)
            raise refused
        span = None
        if self.tracing is not None:
            span = self.tracing.attempt_span(method, self.base_url + path, resend_count)
        start = time.perf_counter()
        outcome = "error"
        try:
            async with self.bulkhead.slot(deadline):
                result = await self._send(method, path, deadline, body, what, span)
        except DownstreamNotFound:
            outcome = "ok"  # a healthy answer
            self.breaker.record_success(ticket)
            raise
        except DownstreamUnavailable as exc:
            outcome = "rejected"
            self.breaker.record_neutral(ticket)
            if self.tracing is not None:
                self.tracing.event(exc.reason, self.name, exc.retry_after)
            raise
        except DownstreamTimeout:
            outcome = "timeout"
            self.breaker.record_failure(ticket)
            raise
        except BadResponse:
            self.breaker.record_failure(ticket)
            raise
        except asyncio.CancelledError:
            # The caller's cancellation: nothing learnt about the downstream.
            outcome = "cancelled"
            self.breaker.record_neutral(ticket)
            raise
        except BaseException:
            self.breaker.record_neutral(ticket)  # a bug here, not the downstream's fault
            raise
        else:
            outcome = "ok"
            self.breaker.record_success(ticket)
            return result
        finally:
            self._outcomes[outcome].value += 1
            if outcome != "rejected":
                self._duration.observe(time.perf_counter() - start)
            if span is not None:
                span.set_attribute("downstream.outcome", outcome)
                if outcome in ("error", "timeout"):
                    self.tracing.fail(span, outcome)  # type: ignore[union-attr]
                span.end()

    async def _send(
        self,
        method: str,
        path: str,
        deadline: Deadline,
        body: Any,
        what: str,
        span: Span | None = None,
    ) -> Any:
        session = self._session
        if session is None:
            raise RuntimeError(f"downstream {self.name} used before start() or after close()")
        remaining = deadline.remaining()
        if remaining <= 0:
            raise DownstreamTimeout(self.name)
        headers = {DEADLINE_HEADER: deadline.header()}
        rid = request_id_var.get()
        if rid is not None:
            headers[REQUEST_ID_HEADER] = rid
        if span is not None:
            self.tracing.inject(span, headers)  # type: ignore[union-attr]  # traceparent
        timeout = aiohttp.ClientTimeout(
            total=remaining, sock_connect=min(self.settings.connect_timeout, remaining)
        )
        data = None if body is None else orjson.dumps(body)
        if data is not None:
            headers["Content-Type"] = "application/json"
        try:
            async with (
                asyncio.timeout(remaining),
                session.request(
                    method, self.base_url + path, data=data, headers=headers, timeout=timeout
                ) as resp,
            ):
                if span is not None:
                    span.set_attribute("http.response.status_code", resp.status)
                payload = await self._read_capped(resp)
                return self._decode(resp.status, payload, what)
        except TimeoutError:  # ours, or aiohttp's (its timeouts subclass TimeoutError)
            raise DownstreamTimeout(self.name) from None
        except aiohttp.ClientError as exc:  # refused, reset, broken framing
            raise BadResponse(
                self.name, f"connection failed: {type(exc).__name__}", retryable=True
            ) from exc

    async def _read_capped(self, resp: aiohttp.ClientResponse) -> bytes:
        cap = self.settings.max_response_bytes
        if resp.content_length is not None and resp.content_length > cap:
            raise BadResponse(self.name, f"response over {cap} bytes", retryable=False)
        chunks, size = [], 0
        async for chunk in resp.content.iter_any():
            size += len(chunk)
            if size > cap:
                raise BadResponse(self.name, f"response over {cap} bytes", retryable=False)
            chunks.append(chunk)
        return b"".join(chunks)

    def _decode(self, status: int, payload: bytes, what: str) -> Any:
        if status == 404:
            raise DownstreamNotFound(self.name, what)
        if status == 504:
            raise DownstreamTimeout(self.name, "downstream ran out of the deadline")
        if status >= 500 or status == 429:
            raise BadResponse(self.name, f"status {status}", retryable=True)
        if not 200 <= status < 300:
            raise BadResponse(self.name, f"unexpected status {status}", retryable=False)
        try:
            return orjson.loads(payload)
        except orjson.JSONDecodeError:
            raise BadResponse(self.name, "malformed JSON", retryable=False) from None

    def _count_retry(self, attempt: int, delay: float) -> None:
        self._retries.value += 1

    def stats(self) -> Mapping[str, float]:
        """Counts for tests and debugging (the metrics are the real interface)."""
        return {o: c.value for o, c in self._outcomes.items()} | {
            "retries": self._retries.value,
            "budget_tokens": self.retry.budget.tokens,
        }


def ensure(cond: bool, service: str, reason: str) -> None:
    """Validate a response's shape; a broken contract is a 502, never a 500."""
    if not cond:
        raise BadResponse(service, f"invalid response: {reason}", retryable=False)


__all__ = ["DownstreamClient", "DownstreamError", "ensure"]
