"""Errors as RFC 9457 problem documents (``application/problem+json``).

The one place where exceptions become HTTP answers: a
:class:`~service.runtime.errors.ProblemError` keeps its status, slug, detail
and headers; an aiohttp ``HTTPException`` (404, 405, 413...) keeps its
status; anything else is logged with the request id and answered 500
without internals. Every document carries the request id.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any

import orjson
from aiohttp import web

from service.runtime.errors import ProblemError
from service.runtime.log import get_logger
from service.runtime.requestid import request_id_var

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Client closed the connection before the answer (nginx's convention).
STATUS_CLIENT_CLOSED = 499

log = get_logger("service.http")


def problem_doc(
    status: int, detail: str, *, slug: str | None = None, title: str | None = None
) -> dict[str, Any]:
    """An RFC 9457 problem document's standard members."""
    phrase = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "Error"
    return {
        "type": f"urn:problem:{slug}" if slug else "about:blank",
        "title": title or phrase,
        "status": status,
        "detail": detail,
    }


def problem_response(
    status: int,
    detail: str,
    *,
    slug: str | None = None,
    title: str | None = None,
    extra: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    """An ``application/problem+json`` response (RFC 9457)."""
    doc = problem_doc(status, detail, slug=slug, title=title)
    rid = request_id_var.get()
    if rid is not None:
        doc["request_id"] = rid
    if extra:
        doc.update(extra)
    return web.Response(
        body=orjson.dumps(doc),
        status=status,
        headers=headers,
        content_type="application/problem+json",
    )


def problem_from_error(exc: ProblemError) -> web.Response:
    response = problem_response(
        exc.status,
        exc.detail,
        slug=exc.slug,
        title=exc.title,
        extra=exc.extra,
        headers=exc.headers,
    )
    if exc.status == 408:
        # RFC 9110 15.5.9: a 408 says the server closes the connection (the rest
        # of a late body may still be on its way).
        response.force_close()
    return response


def problem_from_http_exception(exc: web.HTTPException) -> web.StreamResponse:
    if exc.status < 400:
        return exc  # redirects and the like pass through unchanged
    headers = {k: v for k, v in exc.headers.items() if k in ("Allow", "Retry-After")}
    detail = exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else exc.reason
    return problem_response(exc.status, detail, headers=headers)


def unexpected_error(request: web.Request, exc: BaseException) -> web.Response:
    log.error("unhandled error", method=request.method, path=request.path, exc_info=exc)
    return problem_response(
        500, "The server failed to answer; the error is logged.", slug="internal"
    )


@web.middleware
async def errors_only(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The error mapping alone, for apps without API traffic metrics (the admin app)."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        return problem_from_http_exception(exc)
    except Exception as exc:
        return unexpected_error(request, exc)
