"""``POST /v1/events`` (intake) and ``GET /v1/events/stream`` (follow delivered events).

Intake is all-or-nothing per request: the body is parsed and validated
completely before anything is queued, and then the whole batch is queued or
none of it (429 with ``Retry-After`` when the pipeline has no room, 503 while
draining). A full pipeline is refused before the body is even read, so a
shed request costs next to nothing however large it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools

import orjson
from aiohttp import web

from service.domain.events import EventError, parse_json_body, parse_ndjson_body
from service.domain.keys import EVENTS
from service.domain.settings import EventsSettings
from service.runtime.errors import (
    BadRequest,
    IntakeClosed,
    IntakeFull,
    Overloaded,
    PayloadTooLarge,
    Unavailable,
    UnsupportedMediaType,
    ValidationFailed,
)
from service.runtime.keys import PIPELINE, SETTINGS, STATE
from service.runtime.log import get_logger
from service.runtime.requestid import REQUEST_ID_HEADER, request_id_var

log = get_logger("service.routes.events")

JSON = "application/json"
NDJSON = ("application/x-ndjson", "application/ndjson")
# How often a follower checks for shutdown or a vanished client while idle.
STREAM_POLL_SECONDS = 0.2

_subscriber_numbers = itertools.count(1)


def _overloaded(exc: IntakeFull) -> Overloaded:
    return Overloaded("The event pipeline is full; retry later.", retry_after=exc.retry_after)


def _draining() -> Unavailable:
    return Unavailable("The service is shutting down and takes no new events.")


async def post_events(request: web.Request) -> web.Response:
    app = request.app
    pipeline = app[PIPELINE]
    http = app[SETTINGS].http
    max_events = app[EVENTS].max_per_request
    if app[STATE].draining:
        raise _draining()
    ctype = request.content_type
    if ctype != JSON and ctype not in NDJSON:
        raise UnsupportedMediaType(
            f"Send events as {JSON} or application/x-ndjson, not {ctype or 'no content type'}."
        )
    if request.content_length is not None and request.content_length > http.max_body_bytes:
        raise PayloadTooLarge(f"The body may be at most {http.max_body_bytes} bytes.")
    try:
        # Shed before reading the body: the cheapest possible refusal.
        pipeline.ensure_room()
    except IntakeFull as exc:
        raise _overloaded(exc) from None
    except IntakeClosed:
        raise _draining() from None
    body = await request.read()  # aiohttp answers 413 past client_max_size
    try:
        if ctype == JSON:
            events = parse_json_body(body, max_events)
        else:
            events = parse_ndjson_body(body, max_events)
    except EventError as exc:
        pipeline.count_invalid()
        if exc.code == "invalid_json":
            raise BadRequest(str(exc), extra={"errors": [exc.as_dict()]}) from None
        if exc.code == "too_many_events":
            raise PayloadTooLarge(str(exc)) from None
        raise ValidationFailed(str(exc), extra={"errors": [exc.as_dict()]}) from None
    try:
        ids = pipeline.offer_batch_nowait(events)
    except IntakeFull as exc:
        raise _overloaded(exc) from None
    except IntakeClosed:
        raise _draining() from None
    return web.Response(
        body=orjson.dumps({"accepted": len(ids), "ids": ids}), status=202, content_type=JSON
    )


async def stream_events(request: web.Request) -> web.StreamResponse:
    """NDJSON of events as they become durable, until shutdown, cut-off or disconnect."""
    state = request.app[STATE]
    pipeline = request.app[PIPELINE]
    if state.draining:
        raise _draining()
    transport = request.transport
    task = asyncio.current_task()
    old_name = task.get_name() if task is not None else ""
    if task is not None:
        task.set_name(f"{pipeline.hub.task_prefix}subscriber-{next(_subscriber_numbers)}")
    response = web.StreamResponse(headers={"Cache-Control": "no-store"})
    response.content_type = "application/x-ndjson"
    # prepare() below sends the headers before the middleware could add the id.
    rid = request_id_var.get()
    if rid is not None:
        response.headers[REQUEST_ID_HEADER] = rid

    def stop() -> bool:
        return state.draining or transport is None or transport.is_closing()

    def cut_off() -> None:
        # Abort, not close: close() would wait to flush to a reader that stopped
        # reading, and a write blocked on that reader only ends with the connection.
        if transport is not None:
            transport.abort()

    try:
        await response.prepare(request)
        with pipeline.hub.subscribe(on_cutoff=cut_off) as sub:
            try:
                async with contextlib.aclosing(sub.chunks(stop, STREAM_POLL_SECONDS)) as chunks:
                    async for chunk in chunks:
                        await response.write(chunk)
            except ConnectionError:
                return response  # cut off, or the client went away
        if not sub.cut_off:
            await response.write_eof()
        return response
    finally:
        if task is not None:
            task.set_name(old_name)


def setup(app: web.Application, settings: EventsSettings) -> None:
    app[EVENTS] = settings
    app.router.add_post("/v1/events", post_events)
    app.router.add_get("/v1/events/stream", stream_events, allow_head=False)
