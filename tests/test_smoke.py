from __future__ import annotations

import pytest
from aiohttp.test_utils import TestClient, TestServer

from service.app import create_app
from service.config import Settings


@pytest.mark.asyncio
async def test_livez_answers(settings: Settings) -> None:
    async with TestClient(TestServer(create_app(settings))) as client:
        resp = await client.get("/livez")
        assert resp.status == 200
