"""Test-only service entry points: the shipped service plus routes a test needs."""

from __future__ import annotations

from collections.abc import Callable

from service.app import create_app
from service.cli import EXIT_CONFIG
from service.runtime import log
from service.runtime.lifecycle import Service, run_service
from service.settings import ConfigError, load_settings


def serve_with(name: str, add_routes: Callable[[Service], None]) -> int:
    """``service serve`` on the env's settings, with ``add_routes`` applied before start."""
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"{name}: config error: {exc}")
        return EXIT_CONFIG
    log.configure(settings.log)
    return run_service(settings, create_app, add_routes)
