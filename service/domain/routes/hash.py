"""``POST /v1/hash``: CPU-heavy work (``hashlib.scrypt``) in the CPU executor.

``{"data": str, "salt"?: hex str}`` -> ``{"digest": hex}``. The request is
checked on the loop (cheap), the key derivation runs in the runtime's
CPU executor (``hashlib.scrypt`` releases the GIL, so threads run it in
parallel); when that executor's backlog is full the answer is 503 with
``Retry-After`` at once. Bad input is 400/415/422, never 500.

Demo domain: replace the handler, keep the shape (validate on the loop,
offload the work, map ``ExecutorBusy`` to 503).
"""

from __future__ import annotations

import hashlib
import re
import threading
from typing import Any

import orjson
from aiohttp import web

from service.domain.keys import HASH
from service.domain.settings import HashSettings
from service.runtime.errors import (
    BadRequest,
    ConfigError,
    ExecutorBusy,
    Unavailable,
    UnsupportedMediaType,
    ValidationFailed,
)
from service.runtime.keys import OFFLOAD
from service.runtime.log import get_logger

log = get_logger("service.hash")

FIELDS = frozenset(("data", "salt"))
# Salts are hex; 8 to 64 bytes (RFC 7914 asks for a unique salt; 16+ bytes is usual).
SALT_MIN_BYTES, SALT_MAX_BYTES = 8, 64
_HEX = re.compile(r"(?:[0-9a-fA-F]{2})+").fullmatch
# The salt when none is given: a fixed demo value, so the same data gives the same digest.
DEFAULT_SALT = b"service-template"
# scrypt's block size and parallelism (RFC 7914 section 2's usual values).
SCRYPT_R, SCRYPT_P, DIGEST_BYTES = 8, 1, 32


def scrypt_hex(data: bytes, salt: bytes, n: int) -> str:
    """The digest; runs in an executor thread, so it may block (and it logs with the request id)."""
    # scrypt needs 128 * r * n * p bytes; OpenSSL refuses more than 32 MiB unless told.
    digest = hashlib.scrypt(
        data,
        salt=salt,
        n=n,
        r=SCRYPT_R,
        p=SCRYPT_P,
        maxmem=129 * SCRYPT_R * n * SCRYPT_P,
        dklen=DIGEST_BYTES,
    ).hex()
    log.debug("hash computed", data_bytes=len(data), cost=n, thread=threading.current_thread().name)
    return digest


def _invalid(field: str, detail: str) -> ValidationFailed:
    return ValidationFailed(
        f"{field}: {detail}", extra={"errors": [{"field": field, "detail": detail}]}
    )


def parse_request(body: bytes, max_data_bytes: int) -> tuple[bytes, bytes]:
    """The ``data`` and ``salt`` of a hash request body, or the ProblemError to answer."""
    try:
        doc: Any = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        # orjson also refuses invalid UTF-8 and lone surrogates.
        raise BadRequest(f"the body is not valid JSON: {exc.args[0]}") from None
    if not isinstance(doc, dict):
        raise _invalid("body", "must be a JSON object")
    extra = doc.keys() - FIELDS
    if extra:
        raise _invalid(sorted(extra)[0], "unknown field")
    data = doc.get("data")
    if not isinstance(data, str):
        raise _invalid("data", "is required and must be a string")
    raw = data.encode()
    if len(raw) > max_data_bytes:
        raise _invalid("data", f"must be at most {max_data_bytes} bytes (UTF-8)")
    if "salt" not in doc:
        return raw, DEFAULT_SALT
    salt = doc["salt"]
    if not isinstance(salt, str) or _HEX(salt) is None:
        raise _invalid("salt", "must be a hex string")
    if not SALT_MIN_BYTES <= len(salt) // 2 <= SALT_MAX_BYTES:
        raise _invalid("salt", f"must be {SALT_MIN_BYTES} to {SALT_MAX_BYTES} bytes")
    return raw, bytes.fromhex(salt)


async def read_json_body(request: web.Request) -> bytes:
    if request.content_type != "application/json":
        raise UnsupportedMediaType("the body must be application/json")
    return await request.read()


async def hash_data(request: web.Request) -> web.Response:
    app = request.app
    settings = app[HASH]
    data, salt = parse_request(await read_json_body(request), settings.max_data_bytes)
    try:
        digest = await app[OFFLOAD].run_cpu(scrypt_hex, data, salt, settings.cost)
    except ExecutorBusy as exc:
        raise Unavailable(
            "the hash executor is busy; retry later", retry_after=exc.retry_after
        ) from None
    return web.Response(body=orjson.dumps({"digest": digest}), content_type="application/json")


def setup(app: web.Application, settings: HashSettings) -> None:
    cost = settings.cost
    if cost & (cost - 1):
        # Checked at start-up: scrypt would refuse it on every request.
        raise ConfigError("hash.cost", f"must be a power of two (got {cost})")
    app[HASH] = settings
    app.router.add_post("/v1/hash", hash_data)
