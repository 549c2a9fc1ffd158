"""The supervisor's admin app: ``/metrics`` for the whole service, ``/workers`` for each worker.

It listens where a single process's admin app would (``admin.host``,
``admin.port``), so Prometheus and a human look in the same place either way.

* ``GET /metrics``: every worker's metrics, scraped from its private admin
  port at this moment and labelled ``worker="<n>"``, plus the supervisor's
  (:mod:`.exposition`). A worker that does not answer within
  :data:`SCRAPE_TIMEOUT` is left out, and ``<ns>_worker_up{worker}`` says so.
* ``GET /workers``: one JSON object per worker: its number, pid, state
  (``starting``, ``ready``, ``backoff``, ``exited``), restarts, uptime, its
  private admin port, and ``ready``: what its own ``/readyz`` answers now
  (``null`` when it cannot be asked). The public ``/readyz`` is answered by
  whichever worker takes the connection, so this is the per-worker view.

Each worker's admin port (loopback only) also serves its ``/livez``,
``/readyz``, ``/metrics`` and ``/debug/tasks``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Protocol

import aiohttp
import orjson
from aiohttp import web
from prometheus_client.exposition import choose_encoder

from service.runtime.http.problem import errors_only
from service.runtime.workers.exposition import merge, supervisor_families
from service.runtime.workers.slots import Slot

OPENMETRICS = "application/openmetrics-text"
SCRAPE_TIMEOUT = 5.0  # within Prometheus's default scrape timeout of 10 s


class Supervised(Protocol):
    """What the admin app reads from the supervisor."""

    @property
    def namespace(self) -> str: ...
    @property
    def slots(self) -> Sequence[Slot]: ...
    @property
    def session(self) -> aiohttp.ClientSession | None: ...


SUPERVISOR = web.AppKey("supervisor", Supervised)


async def _ask(
    sup: Supervised, slot: Slot, path: str, headers: dict[str, str] | None = None
) -> tuple[int, str] | None:
    """``GET path`` on the worker's admin port: (status, body), or None when it cannot answer."""
    port = slot.ports.get("admin")
    if sup.session is None or port is None or slot.state != "ready":
        return None
    try:
        async with sup.session.get(f"http://127.0.0.1:{port}{path}", headers=headers) as resp:
            return resp.status, await resp.text()
    except (aiohttp.ClientError, TimeoutError):
        return None


async def metrics(request: web.Request) -> web.Response:
    sup = request.app[SUPERVISOR]
    # OpenMetrics when the scraper asks for it (Prometheus does when it stores
    # exemplars), from the workers too, so their trace-id exemplars come through.
    accept = request.headers.get("Accept", "")
    encode, content_type = choose_encoder(accept)
    openmetrics = content_type.startswith(OPENMETRICS)
    headers = {"Accept": accept} if openmetrics else None
    answers = await asyncio.gather(*(_ask(sup, slot, "/metrics", headers) for slot in sup.slots))
    texts = {
        str(slot.index): answer[1]
        for slot, answer in zip(sup.slots, answers, strict=True)
        if answer is not None and answer[0] == 200
    }
    families = supervisor_families(sup.namespace, sup.slots, texts)
    body = merge(texts, families, encode, openmetrics=openmetrics)
    return web.Response(body=body, headers={"Content-Type": content_type})


async def workers(request: web.Request) -> web.Response:
    sup = request.app[SUPERVISOR]
    answers = await asyncio.gather(*(_ask(sup, slot, "/readyz") for slot in sup.slots))
    body = [
        {**slot.describe(), "ready": None if answer is None else answer[0] == 200}
        for slot, answer in zip(sup.slots, answers, strict=True)
    ]
    return web.Response(body=orjson.dumps(body), content_type="application/json")


def create_supervisor_admin(supervisor: Supervised) -> web.Application:
    app = web.Application(middlewares=[errors_only])
    app[SUPERVISOR] = supervisor
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/workers", workers)
    return app
