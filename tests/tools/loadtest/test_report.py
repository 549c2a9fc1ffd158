"""Reports: histograms merged across workers, percentiles, error kinds, SLO verdicts."""

from __future__ import annotations

import dataclasses
import random

import pytest

from service.tools.loadtest.plan import Plan
from service.tools.loadtest.report import Measured, Report, WrkCorrected, new_histogram, to_wire

HTTP = Plan(kind="http", host="h", port=1, path="/", scenario="url", concurrency=2, workers=2)
TCP = Plan(kind="tcp", host="h", port=1, path="", scenario="tcp-ping", concurrency=2)


def measured(
    latencies_us: list[int],
    statuses: dict[int | str, int],
    errors: dict[str, int] | None = None,
    duration: float = 1.0,
) -> Measured:
    m = Measured(statuses=statuses, errors=errors or {}, duration=duration)
    for us in latencies_us:
        m.latencies_us[us] = m.latencies_us.get(us, 0) + 1
    return m


def test_merged_percentiles_are_those_of_all_requests() -> None:
    """Not an average of per-worker percentiles: one slow worker owns the tail."""
    rng = random.Random(3)
    fast = [rng.randint(900, 1100) for _ in range(9900)]
    slow = [rng.randint(99_000, 101_000) for _ in range(100)] + [1000] * 9800
    parts = [to_wire(measured(fast, {200: len(fast)})), to_wire(measured(slow, {200: len(slow)}))]
    report = Report.merge(HTTP, parts)
    everything = sorted(fast + slow)
    lat = report.latency_ms()
    assert report.requests == len(everything)
    assert lat["p50"] == pytest.approx(everything[len(everything) // 2] / 1000, rel=0.01)
    assert lat["p99"] == pytest.approx(everything[int(len(everything) * 0.99)] / 1000, rel=0.01)
    assert lat["p999"] == pytest.approx(everything[int(len(everything) * 0.999)] / 1000, rel=0.01)
    assert lat["max"] == pytest.approx(max(everything) / 1000, rel=0.001)
    assert report.requests_per_second == pytest.approx(len(everything))


def test_error_kinds_join_transport_errors_and_bad_statuses() -> None:
    report = Report.merge(
        HTTP,
        [
            to_wire(measured([1000] * 10, {200: 7, 404: 2, 503: 1}, {"reset": 2})),
            to_wire(measured([], {}, {"refused": 3, "reset": 1})),
        ],
    )
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


def wrk_stats_correct(values: list[int], interval: int) -> list[int]:
    """wrk's ``stats_correct`` loop, transcribed: the reference for :class:`WrkCorrected`."""
    out = list(values)
    for n in values:
        if n >= 2 * interval:
            m = n - interval
            while m > interval:
                out.append(m)
                m -= interval
    return sorted(out)


def test_wrk_correction_matches_wrks_own_loop() -> None:
    rng = random.Random(7)
    values = (
        [rng.randint(100, 2000) for _ in range(5000)]
        + [rng.randint(3000, 40_000) for _ in range(80)]
        + [900_000]
    )
    hist = new_histogram()
    for v in values:
        hist.record_value(v)
    corrected = WrkCorrected(hist, 900)
    reference = wrk_stats_correct(values, 900)
    # Same rule on 3-significant-digit buckets: a value that sits right on a multiple
    # of the interval may gain or lose one synthetic sample.
    assert corrected.total == pytest.approx(len(reference), rel=0.001)
    for p in (50.0, 90.0, 99.0, 99.9):
        expected = reference[max(int(p * len(reference) / 100 + 0.5), 1) - 1]
        assert corrected.value_at_percentile(p) == pytest.approx(expected, rel=0.002), p
    assert corrected.mean() == pytest.approx(sum(reference) / len(reference), rel=0.002)
    assert corrected.max == hist.get_max_value()


def test_wrk_correction_leaves_a_histogram_without_slow_values_alone() -> None:
    hist = new_histogram()
    for v in range(1000, 3000, 7):  # all under twice the interval: nothing to add
        hist.record_value(v)
    corrected = WrkCorrected(hist, 1600)
    assert corrected.total == hist.get_total_count()
    for p in (50.0, 90.0, 99.0, 99.9):
        assert corrected.value_at_percentile(p) == hist.get_value_at_percentile(p)


def test_closed_loop_reports_wrk_style_percentiles_open_loop_does_not() -> None:
    # 4 connections, 100 answers in 1 s: wrk's interval is 1 s / (100 / 4) = 40 ms.
    parts = [to_wire(measured([10_000] * 95 + [400_000] * 5, {200: 100}, duration=1.0))]
    closed = Report.merge(dataclasses.replace(HTTP, concurrency=4, workers=1), parts)
    assert closed.co_interval_us == 40_000
    raw, wrk_style = closed.latency_ms(), closed.latency_ms_co_corrected()
    assert wrk_style is not None
    assert raw["p90"] == pytest.approx(10.0, rel=0.001)
    # Each 400 ms answer adds 360, 320, ... 80 ms (8 samples): 140 in all, and the
    # 126th (p90) is the fifth of the 320s; raw, the 90th is a 10 ms answer.
    assert wrk_style["p90"] == pytest.approx(320.0, rel=0.001)
    assert wrk_style["max"] == raw["max"]
    data = closed.to_json()
    assert data["latency_ms_co_corrected"] == wrk_style
    assert data["co_interval_ms"] == 40.0
    assert "as wrk" in closed.text()
    opened = Report.merge(dataclasses.replace(HTTP, rate=100.0), parts)
    assert opened.latency_ms_co_corrected() is None
    assert opened.to_json()["latency_ms_co_corrected"] is None
    assert "as wrk" not in opened.text()
