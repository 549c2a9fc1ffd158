"""The load-test driver against real local servers: counts, loops, stalls, failures."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest

from service.tools.loadtest.driver import Driver
from service.tools.loadtest.ping import PingConnection
from service.tools.loadtest.protocols import LineConnection
from service.tools.loadtest.scenarios import build
from tests.support.process import free_port
from tests.tools.loadtest.servers import CountingApp, drive, plan_for, serve_app, serve_raw


@pytest.mark.asyncio
async def test_duration_run_counts_exactly_what_the_server_counted() -> None:
    target = CountingApp()
    async with serve_app(target.app) as port:
        report = await drive(plan_for(port, concurrency=8, duration=0.5))
    assert report.requests > 50
    assert report.requests == target.count
    assert report.statuses == {"200": target.count}
    assert report.errors == 0
    assert report.histogram.get_total_count() == report.requests
    assert 0.45 < report.duration_seconds < 1.0
    assert report.requests_per_second == pytest.approx(report.requests / report.duration_seconds)


@pytest.mark.asyncio
@pytest.mark.parametrize("rate", [None, 400.0])
async def test_requests_run_sends_exactly_n(rate: float | None) -> None:
    target = CountingApp()
    async with serve_app(target.app) as port:
        report = await drive(plan_for(port, concurrency=8, duration=None, requests=250, rate=rate))
    assert report.requests == target.count == 250


@pytest.mark.asyncio
async def test_warmup_requests_are_sent_but_not_counted() -> None:
    target = CountingApp()
    async with serve_app(target.app) as port:
        report = await drive(plan_for(port, concurrency=4, duration=0.5, warmup=0.5))
    assert 0 < report.requests < target.count
    assert report.duration_seconds == pytest.approx(0.5, abs=0.2)


@pytest.mark.asyncio
@pytest.mark.parametrize("rate", [None, 500.0])
async def test_requests_after_warmup_are_exactly_n(rate: float | None) -> None:
    target = CountingApp()
    async with serve_app(target.app) as port:
        report = await drive(
            plan_for(port, concurrency=4, duration=None, requests=100, warmup=0.3, rate=rate)
        )
    assert report.requests == 100
    assert target.count > 100  # the warmup's requests reached the server too


@pytest.mark.asyncio
async def test_open_loop_holds_the_rate() -> None:
    target = CountingApp()
    async with serve_app(target.app) as port:
        report = await drive(plan_for(port, concurrency=4, rate=300.0, duration=1.0))
    assert report.requests == target.count
    assert 270 <= report.requests <= 330
    assert report.error_kinds == {}


@pytest.mark.asyncio
async def test_open_loop_tail_shows_a_stall_that_the_closed_loop_hides() -> None:
    """Coordinated omission: a 1 s pause of the whole server, once, in each run.

    Open loop at a fixed rate: every request due during the pause waits for it,
    and its latency counts from when it was due, so p99 is about the pause.
    Closed loop: the few connections stop sending during the pause, so only
    they see it: p99 stays small and only the max betrays it.
    """
    open_target = CountingApp()
    open_target.stall_at, open_target.stall_for = 0.4, 1.0
    async with serve_app(open_target.app) as port:
        # 2 connections: fewer than 1% of the requests are in flight when the
        # pause starts, so only the correction (not those few) can move p99.
        opened = await drive(plan_for(port, concurrency=2, rate=200.0, duration=2.0))
    closed_target = CountingApp()
    closed_target.stall_at, closed_target.stall_for = 0.4, 1.0
    async with serve_app(closed_target.app) as port:
        closed = await drive(plan_for(port, concurrency=4, duration=2.0))

    open_ms, closed_ms = opened.latency_ms(), closed.latency_ms()
    assert opened.errors == 0
    assert closed.errors == 0
    assert open_ms["p99"] >= 500, open_ms
    assert open_ms["max"] >= 900, open_ms
    assert closed_ms["max"] >= 900, closed_ms  # the stall happened in the closed run too...
    assert closed_ms["p99"] < 500, closed_ms  # ...and its p99 hides it
    # wrk-style correction puts back (some of) what the closed loop omitted.
    assert opened.latency_ms_co_corrected() is None  # nothing omitted: no correction
    corrected = closed.latency_ms_co_corrected()
    assert corrected is not None
    assert corrected["p99"] >= 500, (corrected, closed_ms)


@pytest.mark.asyncio
async def test_statuses_and_http_errors_are_broken_down() -> None:
    target = CountingApp(status=lambda n: 503 if n % 4 == 0 else 200)
    async with serve_app(target.app) as port:
        report = await drive(plan_for(port, concurrency=1, duration=None, requests=100))
    assert report.statuses == {"200": 75, "503": 25}
    assert report.error_kinds == {"http_5xx": 25}
    assert report.error_rate == pytest.approx(0.25)


@pytest.mark.asyncio
async def test_server_closing_keep_alive_connections_is_not_an_error() -> None:
    target = CountingApp(close_every=7)
    async with serve_app(target.app) as port:
        report = await drive(plan_for(port, concurrency=4, duration=None, requests=300))
    assert report.requests == target.count == 300
    assert report.errors == 0


@pytest.mark.asyncio
async def test_refused_connections_are_errors_and_the_run_still_ends() -> None:
    port = free_port()
    started = time.monotonic()
    report = await drive(plan_for(port, concurrency=2, duration=0.5))
    assert time.monotonic() - started < 3
    assert report.requests == 0
    assert set(report.error_kinds) == {"refused"}
    assert report.error_rate == 1.0


@pytest.mark.asyncio
async def test_refused_connections_use_up_a_requests_budget() -> None:
    report = await drive(plan_for(free_port(), concurrency=2, duration=None, requests=5))
    assert report.error_kinds == {"refused": 5}


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("behaviour", "kind"),
    [
        ("garbage", "bad_response"),
        ("reset", "reset"),
        ("close", "closed"),
    ],
)
async def test_misbehaving_targets_are_errors_by_kind(behaviour: str, kind: str) -> None:
    async with serve_raw(behaviour) as port:
        report = await drive(plan_for(port, concurrency=2, duration=0.5))
    assert report.requests == 0
    assert set(report.error_kinds) == {kind}
    assert report.errors >= 2


@pytest.mark.asyncio
async def test_silent_target_times_out_within_the_timeout() -> None:
    async with serve_raw("silent") as port:
        started = time.monotonic()
        report = await drive(plan_for(port, concurrency=2, duration=0.7, timeout=0.3))
    assert time.monotonic() - started < 2.0
    assert report.requests == 0
    assert report.error_kinds["timeout"] >= 4  # 2 connections, a 0.3 s timeout, 0.7 s


@pytest.mark.asyncio
async def test_never_hangs_past_duration_plus_grace() -> None:
    """A target that never answers and a long timeout: the run still ends after the grace."""
    async with serve_raw("silent") as port:
        started = time.monotonic()
        report = await drive(plan_for(port, concurrency=2, duration=0.5, timeout=60.0))
        elapsed = time.monotonic() - started
    assert elapsed < 0.5 + report.plan.grace + 1.0
    assert report.error_kinds == {"timeout": 2}


@pytest.mark.asyncio
async def test_open_loop_counts_requests_it_could_not_send() -> None:
    async with serve_raw("silent") as port:
        report = await drive(plan_for(port, concurrency=1, rate=100.0, duration=0.5, timeout=0.8))
    assert report.error_kinds["timeout"] == 1
    assert 40 <= report.error_kinds["unsent"] <= 51


@pytest.mark.asyncio
@pytest.mark.parametrize("behaviour", ["pong", "pong-split"])  # split: each answer in two reads
async def test_tcp_ping_counts_match_the_server(behaviour: str) -> None:
    stats: dict[str, int] = {}
    async with serve_raw(behaviour, stats) as port:
        report = await drive(
            plan_for(port, kind="tcp", path="", scenario="tcp-ping", concurrency=4, duration=0.5)
        )
    assert report.requests > 50
    assert report.requests == stats["lines"]
    assert report.statuses == {"PONG": report.requests}
    assert report.errors == 0


@pytest.mark.asyncio
async def test_progress_counts_the_answers_the_inlined_pong_path_took() -> None:
    plan = plan_for(0, kind="tcp", path="", scenario="tcp-ping", concurrency=4, duration=0.6)
    seen: list[int] = []
    async with serve_raw("pong") as port:
        driver = Driver(replace(plan, port=port), build(plan), lambda d: seen.append(d.completed))
        measured = await driver.run()
    total = measured.statuses["PONG"]
    # Progress ticks every 0.1 s: the last one, well past half the run, saw most answers.
    assert seen
    assert total // 2 < max(seen) <= total


def test_only_an_unbounded_tcp_ping_loop_takes_the_inlined_pong_path() -> None:
    ping = plan_for(1, kind="tcp", path="", scenario="tcp-ping")
    assert Driver(ping, build(ping)).protocol is PingConnection
    for other in (
        replace(ping, requests=10),
        replace(ping, rate=100.0),
        replace(ping, scenario="tcp-events"),
    ):
        assert Driver(other, build(other)).protocol is LineConnection


@pytest.mark.asyncio
async def test_tcp_events_send_json_lines_and_read_ok() -> None:
    async with serve_raw("events") as port:
        report = await drive(
            plan_for(
                port,
                kind="tcp",
                path="",
                scenario="tcp-events",
                concurrency=2,
                duration=None,
                requests=50,
            )
        )
    assert report.statuses == {"OK": 50}
