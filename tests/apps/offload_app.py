"""The real service plus routes that misuse the executors on purpose, for the offload tests.

    python -m tests.apps.offload_app        # same settings and env as `service serve`

Never shipped (it lives under tests/):

* ``POST /test/hash-inline`` does the work of ``POST /v1/hash`` on the event
  loop, the mistake that offloading prevents; the contrast test measures it.
* ``POST /test/block?seconds=S`` runs a job on the CPU executor that blocks
  for up to S seconds (a stand-in for a 120 s job without burning 120 s of CPU);
  ``POST /test/release`` ends every such job at once.
* ``POST /test/thread?how=to_thread|executor&seconds=S`` runs the same
  blocking job through ``asyncio.to_thread`` or ``loop.run_in_executor(None,
  ...)``, the idioms that bypass ``Offload``, and answers the request id the
  job saw.
"""

from __future__ import annotations

import asyncio
import threading

import orjson
from aiohttp import web

from service.domain.keys import HASH
from service.domain.routes.hash import parse_request, read_json_body, scrypt_hex
from service.runtime import log
from service.runtime.keys import OFFLOAD
from service.runtime.lifecycle import Service
from service.runtime.requestid import request_id_var
from tests.apps import serve_with

_released = threading.Event()
_log = log.get_logger("tests.offload_app")


def _block(seconds: float) -> bool:
    _log.info("test job started", seconds=seconds)
    return _released.wait(seconds)


async def hash_inline(request: web.Request) -> web.Response:
    settings = request.app[HASH]
    data, salt = parse_request(await read_json_body(request), settings.max_data_bytes)
    digest = scrypt_hex(data, salt, settings.cost)  # on the loop: the mistake
    return web.Response(body=orjson.dumps({"digest": digest}), content_type="application/json")


async def block(request: web.Request) -> web.Response:
    seconds = float(request.query.get("seconds", "120"))
    released = await request.app[OFFLOAD].run_cpu(_block, seconds)
    return web.json_response({"released": released})


def _block_and_tell(seconds: float) -> str | None:
    _block(seconds)
    return request_id_var.get()


async def thread(request: web.Request) -> web.Response:
    seconds = float(request.query.get("seconds", "0"))
    if request.query.get("how") == "executor":
        loop = asyncio.get_running_loop()
        seen = await loop.run_in_executor(None, _block_and_tell, seconds)
    else:
        seen = await asyncio.to_thread(_block_and_tell, seconds)
    return web.json_response({"request_id": seen})


async def release(request: web.Request) -> web.Response:
    _released.set()
    return web.json_response({"released": True})


def add_routes(service: Service) -> None:
    service.app.router.add_post("/test/hash-inline", hash_inline)
    service.app.router.add_post("/test/block", block)
    service.app.router.add_post("/test/release", release)
    service.app.router.add_post("/test/thread", thread)


def main() -> int:
    return serve_with("offload_app", add_routes)


if __name__ == "__main__":
    raise SystemExit(main())
