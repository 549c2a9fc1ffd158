"""Shared fixtures: every async test runs on the stdlib loop and on uvloop."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable, Iterator, Mapping

import pytest
import uvloop

from service.runtime import log
from service.runtime.settings import LogSettings
from service.settings import Settings
from tests.support.settings import make_settings


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    # Both loops for every async test (anyio's suite does the same with backends).
    return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


@pytest.fixture(autouse=True)
def log_output() -> Iterator[io.BytesIO]:
    """Each test gets fresh logging into a buffer (structlog config is global state)."""
    buf = io.BytesIO()
    log.configure(LogSettings(format="json", flush_interval=0), stream=buf)
    yield buf
    log.sink().flush()


@pytest.fixture
def settings() -> Settings:
    return make_settings()
