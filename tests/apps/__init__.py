"""Test-only service entry points: the shipped service plus routes a test needs."""

from __future__ import annotations

from collections.abc import Callable

from service import log
from service.cli import EXIT_CONFIG, run_service
from service.config import ConfigError, load_settings
from service.lifecycle import Service


def serve_with(name: str, add_routes: Callable[[Service], None]) -> int:
    """``service serve`` on the env's settings, with ``add_routes`` applied before start."""
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"{name}: config error: {exc}")
        return EXIT_CONFIG
    log.configure(settings.log)
    return run_service(settings, add_routes)
