"""The admin app: /metrics (Prometheus text or OpenMetrics) and /debug/tasks, on their own thread.

Not for the public: it binds to loopback by default (``admin.host``) and is a
separate ``web.Application``, so none of its routes exist on the public port.

:class:`AdminServer` runs it on its own event loop in its own thread, so that
``/metrics`` answers while the service's loop is blocked: exactly when the
stall gauge and the task states are worth reading. (``/livez`` stays on the
service's loop, so that it fails when the loop is stuck.) Reading from
another thread is safe: the lock-free families are plain numbers, the gauge
callbacks read sizes, and ``asyncio.all_tasks`` is made for it. What only
the loop's thread may do, settling the batched HTTP records
(``RequestRecords.settle``) and walking the tasks' stacks, is handed to the
loop (``call_soon_threadsafe``) and waited for briefly; a scrape of a
stalled loop goes on without it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Callable
from typing import TypeVar

import orjson
from aiohttp import web
from prometheus_client.exposition import choose_encoder

from service.runtime.http import health
from service.runtime.http.problem import errors_only, problem_response
from service.runtime.keys import METRICS, SETTINGS, STATE
from service.runtime.metrics import Metrics
from service.runtime.monitor import task_dump

T = TypeVar("T")

SERVICE_LOOP: web.AppKey[asyncio.AbstractEventLoop] = web.AppKey("service_loop")
# How long a scrape waits for the service's loop to settle the HTTP records.
SETTLE_WAIT = 0.05
# How long /debug/tasks waits for the service's loop to list its tasks.
DUMP_WAIT = 1.0
# How long an admin /livez waits for the service's loop to run a callback.
LIVE_WAIT = 1.0


async def on_service_loop(app: web.Application, fn: Callable[[], T], timeout: float) -> T:
    """``fn()``, run on the service's loop (its thread), within ``timeout`` (``TimeoutError``).

    An admin app served on the service's own loop (no :class:`AdminServer`:
    a test's ``TestServer``, say) runs ``fn`` at once.
    """
    loop = app.get(SERVICE_LOOP)
    if loop is None or loop is asyncio.get_running_loop():
        return fn()
    done: concurrent.futures.Future[T] = concurrent.futures.Future()

    def run() -> None:
        if done.set_running_or_notify_cancel():  # False: the waiter gave up
            try:
                done.set_result(fn())
            except BaseException as exc:
                done.set_exception(exc)

    loop.call_soon_threadsafe(run)
    async with asyncio.timeout(timeout):
        return await asyncio.wrap_future(done)


def _settle(metrics: Metrics) -> None:
    for hook in metrics.before_collect:
        hook()


async def metrics(request: web.Request) -> web.Response:
    app = request.app
    app[METRICS].ready_child.set(1.0 if app[STATE].ready else 0.0)
    # Not waited for long when the loop is busy or stalled (or closed): the rest is read here.
    with contextlib.suppress(TimeoutError, RuntimeError):
        await on_service_loop(app, lambda: _settle(app[METRICS]), SETTLE_WAIT)
    # The OpenMetrics format when the scraper asks for it (Prometheus does when
    # it stores exemplars): only it carries the request histogram's trace-id
    # exemplars (tracing on); the classic text format otherwise.
    encode, content_type = choose_encoder(request.headers.get("Accept", ""))
    body = encode(app[METRICS].registry)
    return web.Response(body=body, headers={"Content-Type": content_type})


async def debug_tasks(request: web.Request) -> web.Response:
    app = request.app
    if not app[SETTINGS].admin.debug:
        raise web.HTTPNotFound(text="debug endpoints are off (admin.debug)")
    try:
        groups = app[METRICS].task_groups
        # Run on the service's loop, the dump finds that loop's tasks.
        rows = await on_service_loop(app, lambda: task_dump(groups), DUMP_WAIT)
    except TimeoutError:
        return problem_response(503, f"The event loop did not answer within {DUMP_WAIT} s.")
    return web.Response(body=orjson.dumps(rows), content_type="application/json")


async def livez(request: web.Request) -> web.Response:
    """A worker's ``/livez`` on its admin port: 200 while the *service's* loop answers.

    This handler runs on the admin thread, so it asks the service's loop to run
    an empty callback rather than answering for it.
    """
    try:
        await on_service_loop(request.app, lambda: None, LIVE_WAIT)
    except (TimeoutError, RuntimeError):
        return problem_response(503, f"The event loop did not answer within {LIVE_WAIT} s.")
    return await health.livez(request)


def create_admin_app(public: web.Application) -> web.Application:
    """The admin app shares the public app's settings, metrics and state."""
    admin = web.Application(middlewares=[errors_only])
    admin[SETTINGS] = public[SETTINGS]
    admin[METRICS] = public[METRICS]
    admin[STATE] = public[STATE]
    admin.router.add_get("/metrics", metrics)
    admin.router.add_get("/debug/tasks", debug_tasks)
    return admin


class AdminServer:
    """The admin app on its own loop, in a thread; started and closed from the service's loop."""

    def __init__(self, app: web.Application, host: str, port: int) -> None:
        self.app = app
        self.host = host
        self.port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ended: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread: threading.Thread | None = None

    async def start(self) -> int:
        """Bind and serve; return the bound port (``OSError`` when it cannot bind)."""
        self.app[SERVICE_LOOP] = asyncio.get_running_loop()
        bound: concurrent.futures.Future[int] = concurrent.futures.Future()
        self._thread = threading.Thread(target=self._run, args=(bound,), name="admin", daemon=True)
        self._thread.start()
        return await asyncio.wrap_future(bound)

    async def close(self) -> None:
        """Stop serving and wait for the thread to end (the caller bounds the wait)."""
        loop, stop = self._loop, self._stop
        if loop is None or stop is None or self._ended.done():
            return
        with contextlib.suppress(RuntimeError):  # its loop has just closed by itself
            loop.call_soon_threadsafe(stop.set)
        await asyncio.wrap_future(self._ended)

    def _run(self, bound: concurrent.futures.Future[int]) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve(bound))
        finally:
            loop.close()
            self._ended.set_result(None)

    async def _serve(self, bound: concurrent.futures.Future[int]) -> None:
        self._stop = asyncio.Event()
        runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        try:
            await runner.setup()
            site = web.TCPSite(runner, self.host, self.port, reuse_address=True)
            await site.start()
        except BaseException as exc:
            bound.set_exception(exc)
            await runner.cleanup()
            return
        bound.set_result(runner.addresses[0][1])
        await self._stop.wait()
        await runner.cleanup()
