"""POST /v1/hash: the digest, input limits as 400/415/422, 503 with Retry-After when busy."""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer

from service.app import create_app
from service.domain.routes.hash import DEFAULT_SALT
from service.runtime.errors import ConfigError
from service.runtime.keys import OFFLOAD
from tests.support.settings import make_settings

COST = 1024  # cheap: these tests are about the HTTP contract, not the cost


@pytest_asyncio.fixture
async def client() -> AsyncIterator[TestClient[Any, Any]]:
    settings = make_settings(
        offload={"hash_cost": COST, "cpu_workers": 1, "max_queued": 1, "hash_max_data_bytes": 16}
    )
    async with TestClient(TestServer(create_app(settings))) as client:
        yield client


def _expected(data: bytes, salt: bytes) -> str:
    return hashlib.scrypt(data, salt=salt, n=COST, r=8, p=1, dklen=32).hex()


@pytest.mark.asyncio
async def test_digest_is_scrypt_of_data_and_salt(client: TestClient[Any, Any]) -> None:
    resp = await client.post("/v1/hash", json={"data": "pässword", "salt": "00" * 16})
    assert resp.status == 200
    assert await resp.json() == {"digest": _expected("pässword".encode(), bytes(16))}
    resp = await client.post("/v1/hash", json={"data": "pw"})
    assert await resp.json() == {"digest": _expected(b"pw", DEFAULT_SALT)}


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("body", "field"),
    [
        ([1, 2], "body"),
        ({}, "data"),
        ({"data": 5}, "data"),
        ({"data": "x" * 17}, "data"),  # over hash_max_data_bytes
        ({"data": "é" * 9}, "data"),  # 9 characters, 18 bytes: the limit is in bytes
        ({"data": "x", "salt": "zz"}, "salt"),
        ({"data": "x", "salt": "abc"}, "salt"),  # odd length
        ({"data": "x", "salt": "00" * 4}, "salt"),  # too short
        ({"data": "x", "salt": "00" * 65}, "salt"),  # too long
        ({"data": "x", "salt": 7}, "salt"),
        ({"data": "x", "salt": None}, "salt"),  # null is not "absent" (schemathesis found it)
        ({"data": "x", "pepper": "y"}, "pepper"),
    ],
)
async def test_invalid_input_is_422_naming_the_field(
    client: TestClient[Any, Any],
    body: Any,
    field: str,
) -> None:
    resp = await client.post("/v1/hash", json=body)
    assert resp.status == 422
    assert resp.content_type == "application/problem+json"
    assert (await resp.json())["errors"][0]["field"] == field


@pytest.mark.asyncio
async def test_malformed_json_is_400_and_wrong_type_is_415(client: TestClient[Any, Any]) -> None:
    resp = await client.post(
        "/v1/hash", data=b'{"data": ', headers={"Content-Type": "application/json"}
    )
    assert resp.status == 400
    assert resp.content_type == "application/problem+json"
    resp = await client.post(
        "/v1/hash", data=b'{"data": "\xff"}', headers={"Content-Type": "application/json"}
    )
    assert resp.status == 400
    resp = await client.post(
        "/v1/hash", data=b"data=x", headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert resp.status == 415


@pytest.mark.asyncio
async def test_full_backlog_answers_503_with_retry_after(client: TestClient[Any, Any]) -> None:
    offload = client.app[OFFLOAD]
    gate = threading.Event()
    # cpu_workers=1 and max_queued=1: two blocking jobs fill it.
    jobs = [asyncio.create_task(offload.run_cpu(gate.wait, 30)) for _ in range(2)]
    try:
        await asyncio.sleep(0.05)
        resp = await client.post("/v1/hash", json={"data": "x"})
        assert resp.status == 503
        assert int(resp.headers["Retry-After"]) >= 1
        assert (await resp.json())["type"] == "urn:problem:unavailable"
    finally:
        gate.set()
        await asyncio.gather(*jobs)
    resp = await client.post("/v1/hash", json={"data": "x"})
    assert resp.status == 200


def test_a_hash_cost_that_is_no_power_of_two_is_refused_at_start() -> None:
    with pytest.raises(ConfigError, match=r"hash\.cost"):
        create_app(make_settings(offload={"hash_cost": 1000}))
