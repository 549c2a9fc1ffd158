"""Built-in scenarios: every request encoded once, before the run starts.

A scenario is a zero-argument callable returning the bytes of the next request.
The hot path only picks among pre-encoded byte strings (at most a
``random.choice``), so the client spends its CPU on the network, not on
formatting. Variety comes from pools: 1000 summary paths (users ``u1``..),
64 event batches, 64 hash bodies.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import orjson

from service.tools.loadtest.plan import Plan, PlanError

NextRequest = Callable[[], bytes]
USER_AGENT = "service-loadtest/1"
POOL_SIZE = 64


def encode_http(
    method: str,
    path: str,
    host: str,
    body: bytes | None = None,
    content_type: str = "application/json",
    headers: tuple[tuple[str, str], ...] = (),
) -> bytes:
    """One HTTP/1.1 keep-alive request, ready to write."""
    lines = [
        f"{method} {path} HTTP/1.1",
        f"Host: {host}",
        f"User-Agent: {USER_AGENT}",
        "Accept: */*",
    ]
    lines.extend(f"{name}: {value}" for name, value in headers)
    if body is not None:
        lines.append(f"Content-Type: {content_type}")
        lines.append(f"Content-Length: {len(body)}")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head + (body or b"")


def _pool(items: list[bytes], rng: random.Random) -> NextRequest:
    if len(items) == 1:
        only = items[0]
        return lambda: only
    choice = rng.choice
    return lambda: choice(items)


def _http_pool(name: str, plan: Plan, rng: random.Random) -> list[bytes]:
    host = plan.host if plan.port == 80 else f"{plan.host}:{plan.port}"
    prefix = "" if plan.scenario == "url" else plan.path.split("?")[0].rstrip("/")

    def req(method: str, path: str, body: bytes | None = None) -> bytes:
        return encode_http(method, prefix + path, host, body, headers=plan.headers)

    if name == "url":
        return [req("GET", plan.path)]
    if name == "info":
        return [req("GET", "/v1/info")]
    if name == "summary":
        return [req("GET", f"/v1/users/u{n}/summary") for n in range(1, plan.users + 1)]
    if name == "events":
        batches = []
        for _ in range(POOL_SIZE):
            batch = [
                {
                    "user_id": f"u{rng.randint(1, plan.users)}",
                    "type": rng.choice(("click", "view", "purchase")),
                    "payload": {"n": rng.randint(0, 1_000_000)},
                }
                for _ in range(plan.batch_size)
            ]
            batches.append(req("POST", "/v1/events", orjson.dumps(batch)))
        return batches
    if name == "hash":
        return [
            req("POST", "/v1/hash", orjson.dumps({"data": rng.randbytes(24).hex()}))
            for _ in range(POOL_SIZE)
        ]
    raise PlanError(f"unknown http scenario {name!r}")


def _tcp_pool(name: str, plan: Plan, rng: random.Random) -> list[bytes]:
    if name == "tcp-ping":
        return [b"PING\n"]
    if name == "tcp-events":
        return [
            orjson.dumps(
                {"user_id": f"u{rng.randint(1, plan.users)}", "type": "tcp", "payload": {"n": i}}
            )
            + b"\n"
            for i in range(POOL_SIZE)
        ]
    raise PlanError(f"unknown tcp scenario {name!r}")


def build(plan: Plan, rng: random.Random | None = None) -> NextRequest:
    """The request source of ``plan``'s scenario (``mixed`` picks by weight)."""
    rng = rng or random.Random(plan.seed)
    if plan.kind == "tcp":
        return _pool(_tcp_pool(plan.scenario, plan, rng), rng)
    if plan.scenario != "mixed":
        return _pool(_http_pool(plan.scenario, plan, rng), rng)
    # Weighted pick of a scenario, then a pick within its pool: two choices per
    # request (about 0.5 us), the price of exact weights and full variety.
    sources: list[NextRequest] = []
    for name, weight in plan.mix:
        source = _pool(_http_pool(name, plan, rng), rng)
        sources.extend([source] * weight)
    choice = rng.choice
    return lambda: choice(sources)()
