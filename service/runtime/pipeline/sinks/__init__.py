"""Sink backends: the interface (:mod:`.base`), a file (:mod:`.file`), Redis (:mod:`.redis`)."""

from __future__ import annotations

from concurrent.futures import Executor

from service.runtime.errors import ConfigError
from service.runtime.pipeline.sinks.base import Sink, SinkLine
from service.runtime.pipeline.sinks.file import FileSink
from service.runtime.settings import PipelineSettings

__all__ = ["FileSink", "Sink", "SinkLine", "make_sink"]


def make_sink(settings: PipelineSettings, executor: Executor | None = None) -> Sink:
    """The backend ``pipeline.sink`` names."""
    if settings.sink == "file":
        return FileSink(settings.sink_path, executor)
    if settings.sink == "redis":
        # Imported here: only a service that writes to Redis pays for redis-py.
        from service.runtime.pipeline.sinks.redis import RedisSink

        return RedisSink(settings.redis_url, settings.redis_stream, settings.redis_maxlen)
    raise ConfigError("pipeline.sink", f"the {settings.sink!r} backend is not available yet")
