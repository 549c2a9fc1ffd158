"""A service on the runtime alone with no TCP listener, for the supervisor's tests.

    SERVICE_WORKERS__COUNT=2 python -m tests.apps.http_only

Only the public app (``/livez``, ``/readyz``, ``/v1/info``): the supervisor
binds the TCP port for its workers too, and must let it go once the workers
say they have no such listener.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from service.runtime import log
from service.runtime.appkit import api_app
from service.runtime.config import RuntimeSettings, load
from service.runtime.lifecycle import run_service
from service.runtime.metrics import Metrics
from service.runtime.state import ServiceState


def create_app(settings: Any, *, metrics: Metrics, state: ServiceState) -> web.Application:
    return api_app(settings, metrics=metrics, state=state, name="http_only", version="0")


def main() -> int:
    settings = load(RuntimeSettings)
    log.configure(settings.log)
    return run_service(settings, create_app)


if __name__ == "__main__":
    raise SystemExit(main())
