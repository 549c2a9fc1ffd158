"""/livez, /readyz and /v1/info."""

from __future__ import annotations

import json

import pytest
from aiohttp.test_utils import TestClient, TestServer

from service import __version__
from service.app import create_app
from service.runtime.keys import STATE
from tests.support.settings import make_settings


@pytest.mark.asyncio
async def test_livez_is_200_whatever_the_readiness() -> None:
    app = create_app(make_settings())
    async with TestClient(TestServer(app)) as client:
        for ready in (False, True):
            app[STATE].ready = ready
            resp = await client.get("/livez")
            assert resp.status == 200
            assert await resp.json() == {"status": "ok"}


@pytest.mark.asyncio
async def test_readyz_follows_the_state() -> None:
    app = create_app(make_settings())
    async with TestClient(TestServer(app)) as client:
        # Not ready until the lifecycle says so (start-up).
        resp = await client.get("/readyz")
        assert resp.status == 503
        app[STATE].ready = True
        resp = await client.get("/readyz")
        assert resp.status == 200
        assert await resp.json() == {"status": "ready"}
        app[STATE].ready = False  # the first moment of shutdown
        assert (await client.get("/readyz")).status == 503


@pytest.mark.asyncio
async def test_info_names_version_and_uptime() -> None:
    app = create_app(make_settings(metrics={"namespace": "acme"}))
    async with TestClient(TestServer(app)) as client:
        resp = await client.get("/v1/info")
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "application/json"
        doc = json.loads(await resp.read())
    assert set(doc) == {"name", "version", "uptime_seconds"}
    assert doc["name"] == "acme"
    assert doc["version"] == __version__
    assert 0 <= doc["uptime_seconds"] < 60


@pytest.mark.asyncio
async def test_health_routes_take_get_only() -> None:
    async with TestClient(TestServer(create_app(make_settings()))) as client:
        for path in ("/livez", "/readyz", "/v1/info"):
            assert (await client.post(path)).status == 405
