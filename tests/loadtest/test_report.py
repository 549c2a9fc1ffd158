"""Reports: histograms merged across workers, percentiles, error kinds, SLO verdicts."""

from __future__ import annotations

import random

import pytest

from service.loadtest.driver import Measured
from service.loadtest.plan import Plan
from service.loadtest.report import Report, to_wire

HTTP = Plan(kind="http", host="h", port=1, path="/", scenario="url", concurrency=2, workers=2)
TCP = Plan(kind="tcp", host="h", port=1, path="", scenario="tcp-ping", concurrency=2)


def measured(latencies_us: list[int], statuses: dict[int | str, int],
             errors: dict[str, int] | None = None, duration: float = 1.0) -> Measured:
    m = Measured(statuses=statuses, errors=errors or {}, duration=duration)
    for us in latencies_us:
        m.latencies_us[us] = m.latencies_us.get(us, 0) + 1
    return m


def test_merged_percentiles_are_those_of_all_requests() -> None:
    """Not an average of per-worker percentiles: one slow worker owns the tail."""
    rng = random.Random(3)
    fast = [rng.randint(900, 1100) for _ in range(9900)]
    slow = [rng.randint(99_000, 101_000) for _ in range(100)] + [1000] * 9800
    parts = [to_wire(measured(fast, {200: len(fast)})),
             to_wire(measured(slow, {200: len(slow)}))]
    report = Report.merge(HTTP, parts)
    everything = sorted(fast + slow)
    lat = report.latency_ms()
    assert report.requests == len(everything)
    assert lat["p50"] == pytest.approx(everything[len(everything) // 2] / 1000, rel=0.01)
    assert lat["p99"] == pytest.approx(everything[int(len(everything) * 0.99)] / 1000, rel=0.01)
    assert lat["p999"] == pytest.approx(everything[int(len(everything) * 0.999)] / 1000,
                                        rel=0.01)
    assert lat["max"] == pytest.approx(max(everything) / 1000, rel=0.001)
    assert report.requests_per_second == pytest.approx(len(everything))


def test_error_kinds_join_transport_errors_and_bad_statuses() -> None:
    report = Report.merge(HTTP, [
        to_wire(measured([1000] * 10, {200: 7, 404: 2, 503: 1}, {"reset": 2})),
        to_wire(measured([], {}, {"refused": 3, "reset": 1})),
    ])
    assert report.statuses == {"200": 7, "404": 2, "503": 1}
    assert report.error_kinds == {"http_4xx": 2, "http_5xx": 1, "refused": 3, "reset": 3}
    assert report.errors == 9
    assert report.error_rate == pytest.approx(9 / 16)


def test_tcp_error_answers_are_errors() -> None:
    report = Report.merge(TCP, [to_wire(measured([50] * 4, {"PONG": 2, "ERR overloaded": 2}))])
    assert report.error_kinds == {"err_overloaded": 2}


def test_slo_verdicts() -> None:
    report = Report.merge(HTTP, [to_wire(measured([2000] * 100, {200: 99, 500: 1}))])
    assert report.slo_breaches() == []
    report.slo_p99_ms, report.slo_error_rate = 2.5, 0.01
    assert report.slo_breaches() == []
    report.slo_p99_ms, report.slo_error_rate = 1.5, 0.005
    assert len(report.slo_breaches()) == 2
    empty = Report.merge(HTTP, [to_wire(measured([], {}, {"refused": 1}))])
    empty.slo_p99_ms = 100
    assert empty.slo_breaches() == ["p99: no answers at all"]
    assert empty.latency_ms()["p99"] == 0.0
