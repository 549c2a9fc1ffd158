"""aiohttp's internals in one module: both ways of reading a request give the same records.

The fast path reads aiohttp's private fields; the public path its properties.
A service on either counts the same metrics and writes the same access lines,
and one on an aiohttp whose fields moved falls back to the public path by
itself, saying so in one warning line.
"""

from __future__ import annotations

import io
import json
from typing import Any

import aiohttp
import pytest

from service.app import create_app
from service.runtime import log
from service.runtime.http import compat
from service.runtime.http.listener import HttpListener
from service.runtime.keys import HTTP_MIDDLEWARE, METRICS
from service.runtime.metrics import CounterChild, GaugeChild
from service.runtime.settings import LogSettings
from tests.support.settings import make_settings

# (method, path, request id, body): a route, a 404, a 405, a problem from a handler.
REQUESTS = [
    ("GET", "/v1/info", "rid-1", None),
    ("GET", "/livez", "rid-2", None),
    ("GET", "/no/such/path?x=1", "rid-3", None),
    ("DELETE", "/v1/info", "rid-4", None),
    ("POST", "/v1/hash", "rid-5", b"not json"),
]
# Fields that differ from run to run whatever the path.
VARYING = ("timestamp", "duration_ms")


async def _serve(fast_path: bool) -> tuple[dict[str, float], list[dict[str, Any]], bool]:
    """Run REQUESTS through a real listener; the metric samples and access lines they left."""
    buf = io.BytesIO()
    log.configure(LogSettings(format="json", flush_interval=0), stream=buf)
    settings = make_settings(http={"fast_path": fast_path})
    app = create_app(settings)
    listener = HttpListener(
        app,
        settings.http,
        header_timeouts=CounterChild(),
        in_flight=GaugeChild(),
        middleware=app[HTTP_MIDDLEWARE],
    )
    port = (await listener.start())[0][1]
    try:
        async with aiohttp.ClientSession(headers={"User-Agent": "compat-test"}) as session:
            for method, path, rid, body in REQUESTS:
                async with session.request(
                    method,
                    f"http://127.0.0.1:{port}{path}",
                    data=body,
                    headers={"X-Request-ID": rid},
                ) as resp:
                    await resp.read()
        app[HTTP_MIDDLEWARE].records.settle()
        counts = {
            "/".join(key): child.value for key, child in app[METRICS].http_requests.children()
        }
        fast = app[HTTP_MIDDLEWARE].access.fast
    finally:
        await listener.cleanup()
    log.sink().flush()
    lines = [json.loads(raw) for raw in buf.getvalue().splitlines()]
    access = [
        {k: v for k, v in line.items() if k not in VARYING}
        for line in lines
        if line.get("event") == "access"
    ]
    return counts, access, fast


@pytest.mark.asyncio
async def test_both_paths_count_the_same_metrics_and_write_the_same_access_lines() -> None:
    fast_counts, fast_lines, was_fast = await _serve(fast_path=True)
    public_counts, public_lines, was_public = await _serve(fast_path=False)
    assert (was_fast, was_public) == (True, False)
    assert fast_counts == public_counts
    assert fast_counts["GET//v1/info/200"] == 1
    assert fast_counts["DELETE/unmatched/405"] == 1
    assert fast_counts["GET/unmatched/404"] == 1
    assert len(fast_lines) == len(REQUESTS)
    assert fast_lines == public_lines
    assert [line["request_id"] for line in fast_lines] == [rid for _, _, rid, _ in REQUESTS]
    assert {line["remote"] for line in fast_lines} == {"127.0.0.1"}


def test_a_renamed_private_field_falls_back_to_the_public_api_with_one_warning(
    monkeypatch: pytest.MonkeyPatch, log_output: io.BytesIO
) -> None:
    def renamed(request: Any) -> Any:
        raise AttributeError("'Request' object has no attribute '_message'")

    monkeypatch.setattr(compat, "_describe_fast", renamed)
    assert compat.detect() is compat.PUBLIC
    assert compat.detect(wanted=False) is compat.PUBLIC
    log.sink().flush()
    warnings = [json.loads(raw) for raw in log_output.getvalue().splitlines()]
    assert [w["level"] for w in warnings] == ["warning"]
    assert "_message" in warnings[0]["problem"]


def test_on_this_aiohttp_the_fast_path_is_chosen() -> None:
    assert compat.detect() is compat.FAST


@pytest.mark.asyncio
async def test_the_client_resend_switch_is_off_or_said_to_be_missing(
    log_output: io.BytesIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(compat, "_warned_resend", False)
    async with aiohttp.ClientSession() as session:
        assert compat.disable_connection_resend(session) is True
        assert session._retry_connection is False

    class FutureSession:  # an aiohttp without the field
        pass

    monkey = FutureSession()
    assert compat.disable_connection_resend(monkey) is False  # type: ignore[arg-type]
    assert compat.disable_connection_resend(monkey) is False  # type: ignore[arg-type]
    log.sink().flush()
    lines = [json.loads(raw) for raw in log_output.getvalue().splitlines()]
    assert [line["level"] for line in lines] == ["warning"]  # once, not per session
