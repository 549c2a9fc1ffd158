"""The real service plus routes that misuse the executors on purpose, for the offload tests.

    python -m tests.apps.offload_app        # same settings and env as `service serve`

Never shipped (it lives under tests/):

* ``POST /test/hash-inline`` does the work of ``POST /v1/hash`` on the event
  loop, the mistake that offloading prevents; the contrast test measures it.
* ``POST /test/block?seconds=S`` runs a job on the CPU executor that blocks
  for up to S seconds (a stand-in for a 120 s job without burning 120 s of CPU);
  ``POST /test/release`` ends every such job at once.
"""

from __future__ import annotations

import threading

import orjson
from aiohttp import web

from service.domain.keys import HASH
from service.domain.routes.hash import parse_request, read_json_body, scrypt_hex
from service.runtime import log
from service.runtime.keys import OFFLOAD
from service.runtime.lifecycle import Service
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


async def release(request: web.Request) -> web.Response:
    _released.set()
    return web.json_response({"released": True})


def add_routes(service: Service) -> None:
    service.app.router.add_post("/test/hash-inline", hash_inline)
    service.app.router.add_post("/test/block", block)
    service.app.router.add_post("/test/release", release)


def main() -> int:
    return serve_with("offload_app", add_routes)


if __name__ == "__main__":
    raise SystemExit(main())
