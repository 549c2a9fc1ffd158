"""Tracing for in-process tests: the SDK's in-memory exporter behind the runtime's tracing."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from service.runtime.log import set_trace_ids
from service.runtime.tracing import core


@contextlib.contextmanager
def memory_exporter(monkeypatch: pytest.MonkeyPatch, **env: str) -> Iterator[InMemorySpanExporter]:
    """Every ``Tracing`` made meanwhile exports to the yielded exporter; ``env``: OTEL_* values."""
    exporter = InMemorySpanExporter()
    monkeypatch.setattr(core, "make_exporter", lambda config: exporter)
    for name in ("OTEL_TRACES_SAMPLER", "OTEL_TRACES_SAMPLER_ARG", "OTEL_SDK_DISABLED"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    try:
        yield exporter
    finally:
        set_trace_ids(None)  # a test that did not close its tracing leaves no hook behind


def by_name(spans: tuple[ReadableSpan, ...] | list[ReadableSpan], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


def one(spans: tuple[ReadableSpan, ...] | list[ReadableSpan], name: str) -> ReadableSpan:
    found = by_name(spans, name)
    assert len(found) == 1, (name, [s.name for s in spans])
    return found[0]


def hex_ids(span: ReadableSpan) -> tuple[str, str, str | None]:
    """(trace id, span id, parent span id) in hex."""
    assert span.context is not None
    parent = f"{span.parent.span_id:016x}" if span.parent is not None else None
    return f"{span.context.trace_id:032x}", f"{span.context.span_id:016x}", parent
