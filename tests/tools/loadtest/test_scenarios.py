"""Built-in scenarios produce valid, pre-encoded requests; plans split and parse sanely."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import httptools
import orjson
import pytest

from service.tools.loadtest.plan import (
    Plan,
    PlanError,
    parse_http_target,
    parse_mix,
    parse_tcp_target,
)
from service.tools.loadtest.scenarios import build


class Parsed:
    """One HTTP request as a real server-side parser (llhttp) sees it."""

    def __init__(self, raw: bytes) -> None:
        self.url = b""
        self.headers: dict[bytes, bytes] = {}
        self.body = b""
        self.complete = False
        parser = httptools.HttpRequestParser(self)
        parser.feed_data(raw)
        self.method = parser.get_method()
        self.keep_alive = parser.should_keep_alive()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.lower()] = value

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.complete = True


def http_plan(scenario: str, **kw: Any) -> Plan:
    return Plan(
        kind="http",
        host="127.0.0.1",
        port=8080,
        path="/",
        scenario=scenario,
        concurrency=1,
        seed=7,
        **kw,
    )


def sample(plan: Plan, n: int = 500) -> list[Parsed]:
    source = build(plan, random.Random(1))
    return [Parsed(source()) for _ in range(n)]


@pytest.mark.parametrize(
    ("scenario", "method", "path"),
    [
        ("info", b"GET", b"/v1/info"),
        ("url", b"GET", b"/"),
    ],
)
def test_simple_requests_are_complete_keep_alive_requests(
    scenario: str, method: bytes, path: bytes
) -> None:
    (req,) = sample(http_plan(scenario), 1)
    assert (req.method, req.url, req.complete, req.keep_alive) == (method, path, True, True)
    assert req.headers[b"host"] == b"127.0.0.1:8080"


def test_url_scenario_keeps_path_and_query_and_headers() -> None:
    host, port, path = parse_http_target("http://localhost:9000/a/b?x=1")
    plan = Plan(
        kind="http",
        host=host,
        port=port,
        path=path,
        scenario="url",
        concurrency=1,
        headers=(("X-Request-ID", "abc"),),
    )
    (req,) = sample(plan, 1)
    assert req.url == b"/a/b?x=1"
    assert req.headers[b"x-request-id"] == b"abc"


def test_events_are_batches_of_the_given_size() -> None:
    for req in sample(http_plan("events", batch_size=5), 50):
        assert (req.method, req.url) == (b"POST", b"/v1/events")
        assert req.headers[b"content-type"] == b"application/json"
        batch = orjson.loads(req.body)
        assert len(batch) == 5
        assert all(set(e) == {"user_id", "type", "payload"} for e in batch)


def test_summary_spreads_over_the_user_ids() -> None:
    users = {req.url for req in sample(http_plan("summary", users=20), 400)}
    assert users == {f"/v1/users/u{n}/summary".encode() for n in range(1, 21)}


def test_hash_posts_data() -> None:
    for req in sample(http_plan("hash"), 20):
        assert req.url == b"/v1/hash"
        assert isinstance(orjson.loads(req.body)["data"], str)


def test_mixed_follows_the_weights() -> None:
    plan = http_plan("mixed", mix=parse_mix("info=6,hash=3,summary=1"))
    counts = Counter(req.url.split(b"/")[2] for req in sample(plan, 3000))
    assert counts.keys() == {b"info", b"hash", b"users"}
    assert counts[b"info"] == pytest.approx(1800, rel=0.1)
    assert counts[b"hash"] == pytest.approx(900, rel=0.15)
    assert counts[b"users"] == pytest.approx(300, rel=0.25)


def test_base_url_prefix_is_kept_for_scenarios() -> None:
    plan = Plan(kind="http", host="h", port=80, path="/api/", scenario="info", concurrency=1)
    (req,) = sample(plan, 1)
    assert req.url == b"/api/v1/info"
    assert req.headers[b"host"] == b"h"


def test_tcp_scenarios_are_lines() -> None:
    tcp = Plan(kind="tcp", host="h", port=1, path="", scenario="tcp-ping", concurrency=1)
    assert build(tcp)() == b"PING\n"
    events = build(
        Plan(kind="tcp", host="h", port=1, path="", scenario="tcp-events", concurrency=1)
    )
    line = events()
    assert line.endswith(b"\n")
    assert line.count(b"\n") == 1
    assert {"user_id", "type"} <= set(orjson.loads(line))


def test_split_shares_connections_rate_and_requests() -> None:
    plan = Plan(
        kind="http",
        host="h",
        port=1,
        path="/",
        scenario="info",
        concurrency=8,
        rate=900.0,
        requests=10,
        workers=3,
        seed=1,
    )
    parts = plan.split()
    assert [p.concurrency for p in parts] == [3, 3, 2]
    assert [p.requests for p in parts] == [4, 3, 3]
    assert [p.rate for p in parts] == [300.0] * 3
    assert [p.seed for p in parts] == [1, 2, 3]
    assert all(p.workers == 1 for p in parts)


@pytest.mark.parametrize("bad", ["https://x/", "http://:80/", "http://x:99999/"])
def test_bad_http_targets(bad: str) -> None:
    with pytest.raises(PlanError):
        parse_http_target(bad)


def test_targets_parse() -> None:
    assert parse_http_target("127.0.0.1:8080") == ("127.0.0.1", 8080, "/")
    assert parse_tcp_target("[::1]:8888") == ("::1", 8888)
    for bad in ("x", "x:0", "x:y", ":1"):
        with pytest.raises(PlanError):
            parse_tcp_target(bad)
