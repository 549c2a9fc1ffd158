"""Settings for in-process tests: loopback, free ports, a sink file under the temp directory."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from service.settings import Settings

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
