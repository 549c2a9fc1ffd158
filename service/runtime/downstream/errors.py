"""Why a downstream call failed, as a small hierarchy the summary route maps in one place.

The split follows what the caller can do about it: the thing does not exist
(404), we did not even try because the downstream is known to be unwell or
full (503), the budget ran out (504), or the downstream answered badly (502).
"""

from __future__ import annotations


class DownstreamError(Exception):
    """A downstream call did not produce a usable answer."""

    def __init__(self, service: str, reason: str) -> None:
        self.service = service
        self.reason = reason
        super().__init__(f"{service}: {reason}")


class DownstreamNotFound(DownstreamError):
    """The downstream answered 404: a healthy answer, never retried, never a breaker failure."""

    def __init__(self, service: str, what: str) -> None:
        super().__init__(service, f"{what} not found")


class DownstreamUnavailable(DownstreamError):
    """The call was refused locally, without touching the downstream."""

    def __init__(self, service: str, reason: str, retry_after: float) -> None:
        self.retry_after = retry_after
        super().__init__(service, reason)


class CircuitOpen(DownstreamUnavailable):
    def __init__(self, service: str, retry_after: float) -> None:
        super().__init__(service, "circuit breaker open", retry_after)


class BulkheadFull(DownstreamUnavailable):
    def __init__(self, service: str) -> None:
        super().__init__(service, "too many concurrent calls", 1.0)


class DownstreamTimeout(DownstreamError):
    """The deadline ran out before the downstream answered."""

    def __init__(self, service: str, reason: str = "deadline exceeded") -> None:
        super().__init__(service, reason)


class BadResponse(DownstreamError):
    """A connection failure, an error status, or a body that is too big or malformed.

    ``retryable`` is true for failures a second attempt may not see again
    (connection errors, 5xx, 429); false for broken contracts (bad JSON, 4xx).
    """

    def __init__(self, service: str, reason: str, *, retryable: bool) -> None:
        self.retryable = retryable
        super().__init__(service, reason)
