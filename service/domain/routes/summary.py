"""``GET /v1/users/{user_id}/summary``: the user and their orders, fetched concurrently.

Both calls run under one ``asyncio.TaskGroup`` inside the request deadline
(``downstream.deadline_seconds``). The TaskGroup is what makes the fan-out
fail fast and clean up: the first call to fail (a 404 for the user, say)
cancels its sibling at once, and no task outlives the handler, whatever
happens. Every outcome is mapped to a status in one place,
:func:`problem_for`.
"""

from __future__ import annotations

import asyncio
import math
import re
from typing import Any

import orjson
from aiohttp import web

from service.domain.downstreams import orders, users
from service.runtime.downstream import (
    BadResponse,
    Deadline,
    DownstreamNotFound,
    DownstreamTimeout,
    DownstreamUnavailable,
)
from service.runtime.errors import (
    BadGateway,
    BadRequest,
    GatewayTimeout,
    NotFound,
    ProblemError,
    Unavailable,
)
from service.runtime.keys import SETTINGS

# The same shape as an event's user_id (1-64 chars), restricted to URL-safe characters.
_USER_ID = re.compile(r"[A-Za-z0-9._\-]{1,64}").fullmatch
# The downstream calls end this share of the budget (at most 50 ms) before the
# request deadline: time to build the answer on a busy loop, and their own
# timeouts (counted per downstream) fire before the request's backstop.
_RESERVE_SHARE, _RESERVE_MAX = 0.05, 0.05
RECENT_ORDERS = 5


async def summary(request: web.Request) -> web.Response:
    user_id = request.match_info["user_id"]
    if _USER_ID(user_id) is None:
        raise BadRequest("user_id must be 1-64 letters, digits, '.', '_' or '-'")
    users_client, orders_client = users(request.app), orders(request.app)
    budget = request.app[SETTINGS].downstream.deadline_seconds
    deadline = Deadline.after(budget - min(_RESERVE_MAX, budget * _RESERVE_SHARE))
    try:
        async with asyncio.timeout(budget), asyncio.TaskGroup() as tg:
            user = tg.create_task(
                users_client.fetch_user(user_id, deadline), name="downstream:summary-user"
            )
            found = tg.create_task(
                orders_client.fetch_orders(user_id, deadline), name="downstream:summary-orders"
            )
    except (TimeoutError, ExceptionGroup) as exc:
        raise problem_for(exc) from None
    body = {"user": user.result(), "orders": _orders_summary(found.result())}
    return web.Response(body=orjson.dumps(body), content_type="application/json")


# The status a failed fan-out answers, most telling first: a 404 is the real
# answer even if the sibling failed too; then "we did not try" (503), "out of
# time" (504), "the downstream answered badly" (502).
_PRECEDENCE: tuple[type[Exception], ...] = (
    DownstreamNotFound,
    DownstreamUnavailable,
    DownstreamTimeout,
    TimeoutError,
    BadResponse,
)


def problem_for(exc: TimeoutError | ExceptionGroup[Exception]) -> ProblemError | Exception:
    """The one mapping of a fan-out failure to an HTTP problem.

    An error that is not a downstream failure is a bug: the group itself is
    returned, so the middleware logs it in full and answers 500.
    """
    errors = list(_leaves(exc))
    if not all(isinstance(e, _PRECEDENCE) for e in errors):
        return exc
    first = min(
        errors, key=lambda e: next(i for i, kind in enumerate(_PRECEDENCE) if isinstance(e, kind))
    )
    if isinstance(first, DownstreamNotFound):
        return NotFound("no such user")
    if isinstance(first, DownstreamUnavailable):
        return Unavailable(
            f"the {first.service} service is unavailable",
            retry_after=max(1, math.ceil(first.retry_after)),
        )
    if isinstance(first, DownstreamTimeout | TimeoutError):
        return GatewayTimeout("the downstream services did not answer in time")
    assert isinstance(first, BadResponse)
    return BadGateway(f"the {first.service} service failed")


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub)]
    return [exc]


def _orders_summary(orders: list[dict[str, Any]]) -> dict[str, Any]:
    recent = sorted(orders, key=lambda o: o["ts"], reverse=True)[:RECENT_ORDERS]
    return {
        "count": len(orders),
        "total": round(math.fsum(o["amount"] for o in orders), 2),
        "recent": recent,
    }


def setup(app: web.Application) -> None:
    app.router.add_get("/v1/users/{user_id}/summary", summary, allow_head=False)
