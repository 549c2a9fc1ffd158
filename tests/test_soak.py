"""The verdict logic of scripts/soak.py (the soak itself runs in `make soak` and CI)."""

from __future__ import annotations

import importlib.util
import random
import sys
from types import ModuleType
from typing import Any

import pytest

from tests.support.process import ROOT


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("soak", ROOT / "scripts" / "soak.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["soak"] = module
    spec.loader.exec_module(module)
    return module


soak = _load()


def test_slope_fits_a_line_exactly() -> None:
    xs = [0.0, 1.0, 2.0, 3.0]
    assert soak.slope(xs, [5 + 2 * x for x in xs]) == pytest.approx(2.0)
    assert soak.slope([1.0], [3.0]) == 0.0
    assert soak.slope([2.0, 2.0], [1.0, 9.0]) == 0.0


def test_rss_growth_is_extrapolated_to_ten_minutes() -> None:
    # 1 kB/s for two minutes is 600 kB per 10 minutes: under the 1 MB limit.
    samples = [(float(t), 50e6 + 1000 * t) for t in range(0, 120, 3)]
    assert soak.rss_growth_per_10_min(samples) == pytest.approx(600_000)
    # 2 kB/s is 1.2 MB per 10 minutes: a leak.
    leak = [(float(t), 50e6 + 2000 * t) for t in range(0, 120, 3)]
    assert soak.rss_growth_per_10_min(leak) == pytest.approx(1_200_000)


def test_noise_without_growth_fits_a_flat_slope() -> None:
    rng = random.Random(1)
    samples = [(float(t), 50e6 + rng.uniform(-200e3, 200e3)) for t in range(0, 600, 3)]
    assert abs(soak.rss_growth_per_10_min(samples)) < 200_000


@pytest.mark.parametrize(
    ("start", "end", "ok"),
    [
        (100, 105, True),
        (100, 95, True),
        (100, 106, False),
        (100, 94, False),
        (10, 11, True),
        (10, 12, False),
        (0, 1, True),
        (0, 2, False),
    ],
)
def test_counts_must_stay_within_five_percent(start: float, end: float, ok: bool) -> None:
    assert soak.within(start, end) is ok


@pytest.mark.parametrize(
    ("route", "status", "draining", "unexpected"),
    [
        ("events", 202, False, False),
        ("events", 429, False, False),
        ("events", 500, False, True),
        ("summary", 500, False, True),
        ("summary", 502, False, False),
        ("summary", 504, False, False),
        ("summary", 503, False, False),
        ("events", 502, False, True),
        ("events", 503, False, True),
        ("events", 503, True, False),
        ("hash", 503, False, False),
        ("info", 504, True, True),
    ],
)
def test_which_5xx_are_expected(route: str, status: int, draining: bool, unexpected: bool) -> None:
    assert soak.unexpected_5xx(route, status, draining) is unexpected


def _good() -> dict[str, Any]:
    return {
        "rss_growth_bytes_per_10_min": 100_000,
        "tasks_start": 40,
        "tasks_end": 41,
        "fds_start": 60,
        "fds_end": 60,
        "unexpected_5xx": 0,
        "dropped_mid_request": 0,
        "events_lost": 0,
        "exit_code": 0,
        "shutdown_seconds": 2.0,
        "shutdown_budget_seconds": 24.0,
        "acknowledged_events": 1000,
    }


def test_a_clean_run_passes() -> None:
    assert soak.judge(_good()).failures == []


@pytest.mark.parametrize(
    ("key", "value", "word"),
    [
        ("rss_growth_bytes_per_10_min", 1_000_000, "RSS"),
        ("tasks_end", 45, "tasks"),
        ("fds_end", 70, "fds"),
        ("unexpected_5xx", 1, "5xx"),
        ("dropped_mid_request", 1, "dropped"),
        ("events_lost", 1, "lost"),
        ("exit_code", 1, "exit"),
        ("shutdown_seconds", 30.0, "shutdown"),
        ("acknowledged_events", 0, "acknowledged"),
    ],
)
def test_each_criterion_can_fail_the_run(key: str, value: Any, word: str) -> None:
    report = {**_good(), key: value}
    failures = soak.judge(report).failures
    assert len(failures) == 1
    assert word in failures[0]
