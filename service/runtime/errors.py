"""The project's error hierarchy.

Each error subclasses the nearest built-in exception, keeps its data as
attributes and builds its message in ``__init__`` (the way CPython's
``asyncio.exceptions`` does). HTTP mapping lives in one place:
``service.runtime.http.middleware`` turns :class:`ProblemError` into problem+json.
"""

from __future__ import annotations

from typing import Any


class ConfigError(ValueError):
    """Bad configuration: the CLI prints one line and exits 2."""

    def __init__(self, setting: str, reason: str) -> None:
        self.setting = setting
        self.reason = reason
        super().__init__(f"{setting}: {reason}" if setting else reason)


class ProblemError(Exception):
    """An error answered as an RFC 9457 problem document.

    ``type_`` is a short slug (rendered as ``urn:problem:<slug>``), ``status``
    the HTTP status, ``detail`` a human sentence without internals, ``extra``
    more members (e.g. ``errors`` for a 422) and ``headers`` extra response
    headers (e.g. ``Retry-After``).
    """

    status = 500
    slug = "internal"
    title = "Internal Server Error"

    def __init__(
        self,
        detail: str,
        *,
        extra: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.detail = detail
        self.extra = extra or {}
        self.headers = headers or {}
        super().__init__(detail)


class BadRequest(ProblemError):
    status = 400
    slug = "bad-request"
    title = "Bad Request"


class NotFound(ProblemError):
    status = 404
    slug = "not-found"
    title = "Not Found"


class PayloadTooLarge(ProblemError):
    status = 413
    slug = "payload-too-large"
    title = "Payload Too Large"


class UnsupportedMediaType(ProblemError):
    status = 415
    slug = "unsupported-media-type"
    title = "Unsupported Media Type"


class ValidationFailed(ProblemError):
    status = 422
    slug = "validation-failed"
    title = "Unprocessable Content"


class Overloaded(ProblemError):
    """No room right now: the client should retry after ``retry_after`` seconds."""

    status = 429
    slug = "overloaded"
    title = "Too Many Requests"

    def __init__(self, detail: str, *, retry_after: int = 1) -> None:
        self.retry_after = retry_after
        super().__init__(detail, headers={"Retry-After": str(retry_after)})


class RequestTimeout(ProblemError, TimeoutError):
    """408: the request's body did not arrive in time; the connection is closed after the answer.

    A ``TimeoutError`` too: it is raised from the body's stream, which aiohttp
    reads again after the answer (to drain what is left) and where it takes a
    timeout as "give up and close" rather than an unexpected error.
    """

    status = 408
    slug = "request-timeout"
    title = "Request Timeout"

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        super().__init__(f"The request body did not arrive within {seconds:g} s.")


class BadGateway(ProblemError):
    status = 502
    slug = "bad-gateway"
    title = "Bad Gateway"


class Unavailable(ProblemError):
    """503: draining, a circuit open, or an executor backlog full."""

    status = 503
    slug = "unavailable"
    title = "Service Unavailable"

    def __init__(self, detail: str, *, retry_after: int | None = None) -> None:
        self.retry_after = retry_after
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
        super().__init__(detail, headers=headers)


class GatewayTimeout(ProblemError):
    status = 504
    slug = "gateway-timeout"
    title = "Gateway Timeout"


class IntakeFull(Exception):
    """The pipeline has no room for these events now (HTTP 429, TCP ``ERR overloaded``)."""

    def __init__(self, needed: int = 1, retry_after: int = 1) -> None:
        self.needed = needed
        self.retry_after = retry_after
        super().__init__(f"no room for {needed} event(s); retry after {retry_after}s")


class ExecutorBusy(Exception):
    """An executor's backlog is full: the job was refused at once (HTTP 503 with Retry-After)."""

    def __init__(self, executor: str, retry_after: int = 1) -> None:
        self.executor = executor
        self.retry_after = retry_after
        super().__init__(f"the {executor} executor backlog is full; retry after {retry_after}s")


class IntakeClosed(Exception):
    """The pipeline is draining and takes no new events (HTTP 503, TCP ``BYE shutdown``)."""

    def __init__(self) -> None:
        super().__init__("the service is shutting down and takes no new events")
