"""The real service with a resource that fails while it starts, for the supervisor's tests.

    SERVICE_WORKERS__COUNT=2 python -m tests.apps.crash_at_start

Every start raises (a traceback and exit code 1, as any bug at start-up
would), so a supervisor sees its workers crash in a loop.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from service.runtime.lifecycle import Service
from tests.apps import serve_with


async def broken(app: web.Application) -> AsyncIterator[None]:
    raise RuntimeError("this resource cannot start")
    yield  # a cleanup context: an async generator


def add_broken_resource(service: Service) -> None:
    service.app.cleanup_ctx.append(broken)


def main() -> int:
    return serve_with("crash_at_start", add_broken_resource)


if __name__ == "__main__":
    raise SystemExit(main())
