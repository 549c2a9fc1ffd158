"""Shared fixtures: every async test runs on the stdlib loop and on uvloop."""

from __future__ import annotations

import asyncio
import io
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import uvloop

from service import log
from service.config import LogSettings, Settings


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


# The pipeline's sink file for tests that do not choose one: never ./data, which
# concurrent test runs would share (and a start-up truncates a torn tail).
TEST_SINK_DIR = Path(tempfile.gettempdir()) / f"service-tests-{os.getpid()}"


def make_settings(**sections: dict[str, Any]) -> Settings:
    """Settings for an in-process test: loopback, free ports, overrides per section."""
    base: dict[str, dict[str, Any]] = {
        "http": {"host": "127.0.0.1", "port": 0},
        "tcp": {"host": "127.0.0.1", "port": 0},
        "admin": {"host": "127.0.0.1", "port": 0},
        "pipeline": {"sink_path": str(TEST_SINK_DIR / "events.jsonl")},
    }
    for name, values in sections.items():
        base.setdefault(name, {}).update(values)
    return Settings(**base)


@pytest.fixture
def settings() -> Settings:
    return make_settings()
