"""A blank service on the runtime alone: the starting point for a service of your own.

It keeps everything the runtime gives (lifecycle and graceful shutdown,
``/livez``, ``/readyz``, ``/v1/info``, the admin ``/metrics``, request ids,
JSON logs, executors) and adds the three things a service usually has:

* a route, ``POST /notes`` ``{"text": str}``: the note goes into the pipeline
  and the answer is its id (202), or 429 / 503 when the pipeline has no room
  or is draining;
* a pipeline stage, :class:`Shout`, that upper-cases each note on its way to
  the sink (``pipeline.sink_path``: one JSON line per note, fsynced);
* a TCP line handler on ``tcp.port``: the runtime's echo (``PING`` answers ``PONG``).

Run it with ``python -m examples.minimal``; settings come from
``SERVICE_<SECTION>__<KEY>`` variables and a ``SERVICE_CONFIG`` file, as for
the demo.
"""

from __future__ import annotations

import sys
from typing import Any

import orjson
from aiohttp import web

from service.runtime import log
from service.runtime.appkit import api_app, pipeline, tcp_server
from service.runtime.config import RuntimeSettings, load
from service.runtime.errors import (
    BadRequest,
    ConfigError,
    IntakeClosed,
    IntakeFull,
    Overloaded,
    Unavailable,
)
from service.runtime.keys import PIPELINE
from service.runtime.lifecycle import EXIT_CONFIG, run_service
from service.runtime.metrics import Metrics
from service.runtime.pipeline import Stage
from service.runtime.state import ServiceState
from service.runtime.tcp import Echo

MAX_TEXT = 1000


class Settings(RuntimeSettings):
    """The runtime's settings, with this service's stage declared (one worker)."""

    layer_defaults = {
        "pipeline": {
            "sink_path": "data/notes.jsonl",
            "stages": {"shout": {"workers": 1, "capacity": 1000}},
        }
    }


class Shout(Stage):
    """Each note, upper-cased: a stage maps every value to its next form, in order."""

    name = "shout"

    async def process(self, values: list[Any]) -> list[Any]:
        return [{"text": value["text"].upper()} for value in values]


async def post_note(request: web.Request) -> web.Response:
    try:
        text = orjson.loads(await request.read()).get("text")
    except (orjson.JSONDecodeError, AttributeError):
        raise BadRequest("the body must be a JSON object") from None
    if not isinstance(text, str) or not 0 < len(text) <= MAX_TEXT:
        raise BadRequest(f"text must be a string of 1 to {MAX_TEXT} characters")
    try:
        note_id = request.app[PIPELINE].offer_nowait({"text": text})
    except IntakeFull as exc:
        raise Overloaded("no room for notes now", retry_after=exc.retry_after) from None
    except IntakeClosed:
        raise Unavailable("shutting down") from None
    return web.json_response({"id": note_id}, status=202)


def create_app(settings: Settings, *, metrics: Metrics, state: ServiceState) -> web.Application:
    app = api_app(settings, metrics=metrics, state=state, name="minimal", version="0.1.0")
    app.cleanup_ctx.append(pipeline(lambda app: [Shout()]))
    app.cleanup_ctx.append(tcp_server(lambda app: Echo()))
    app.router.add_post("/notes", post_note)
    return app


def main() -> int:
    try:
        settings = load(Settings)
    except ConfigError as exc:
        print(f"minimal: config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    log.configure(settings.log)
    return run_service(settings, create_app)


if __name__ == "__main__":
    raise SystemExit(main())
