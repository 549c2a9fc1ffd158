"""Merging what the workers measured into one report; text, JSON and the SLO verdict.

Each worker ships its latencies as an encoded HdrHistogram (the compressed
wire format of the HdrHistogram family), so the merged percentiles are those
of all requests, not an average of per-worker percentiles (which is wrong for
tails). Values are microseconds with 3 significant digits.

A closed-loop report also gives the percentiles *as wrk prints them*: wrk
(not wrk2) post-corrects its closed-loop histogram for coordinated omission
(``stats_correct`` in its ``src/stats.c``, called at the end of ``main`` in
``src/wrk.c``), so its ``--latency`` tail is not the raw one. Comparing our
raw p99 with wrk's is comparing two different statistics; :class:`WrkCorrected`
applies wrk's exact rule to our histogram so the two can be held side by side.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any

from hdrh.histogram import HdrHistogram

from service.tools.loadtest.plan import Plan

HIGHEST_US = 3_600_000_000  # one hour: any real latency fits
PERCENTILES = (("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p999", 99.9))
GOOD_TCP = ("PONG", "OK")


@dataclass
class Measured:
    """What one process measured in its window: raw enough to merge exactly."""

    latencies_us: dict[int, int] = field(default_factory=dict)
    statuses: dict[int | str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    duration: float = 0.0

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1


def new_histogram() -> HdrHistogram:
    return HdrHistogram(1, HIGHEST_US, 3)


def to_wire(m: Measured) -> dict[str, Any]:
    """One worker's result as plain picklable data (histogram encoded)."""
    hist = new_histogram()
    for us, count in m.latencies_us.items():
        hist.record_value(min(max(us, 1), HIGHEST_US), count)
    return {
        "histogram": hist.encode(),
        "statuses": dict(m.statuses),
        "errors": dict(m.errors),
        "duration": m.duration,
    }


def wrk_interval_us(requests: int, concurrency: int, duration_seconds: float) -> int:
    """wrk's expected interval: run time over answers per connection, integer microseconds.

    ``interval = runtime_us / (complete / connections)`` in wrk's ``main``, integer
    division included; 0 (no correction) when a connection averaged under one answer.
    """
    per_connection = requests // concurrency if concurrency > 0 else 0
    if per_connection == 0:
        return 0
    return int(duration_seconds * 1_000_000) // per_connection


class WrkCorrected:
    """``histogram`` after wrk's coordinated-omission correction with ``interval`` (us).

    wrk's rule: every recorded latency ``n >= 2 * interval`` adds its count again at
    ``n - interval``, ``n - 2 * interval``, ... while the value stays above ``interval``
    (the requests a stalled connection would have sent had it not been waiting).
    A 10 s latency with a 100 us interval means 100,000 synthetic samples, so they
    are counted in closed form per recorded value instead of being recorded one by
    one; percentiles are found by bisection over the value. With no recorded value
    at or above ``2 * interval`` the result is the raw histogram's, exactly.
    """

    def __init__(self, histogram: HdrHistogram, interval_us: int) -> None:
        self.interval = interval_us
        recorded = [
            (int(item.value_iterated_to), int(item.count_at_value_iterated_to))
            for item in histogram.get_recorded_iterator()
        ]
        self.recorded = recorded
        self.values = [v for v, _ in recorded]
        self.cumulative = list(accumulate(c for _, c in recorded))
        # (value, count, how many synthetic copies below it): k = 1.. while v - k*i > i.
        self.extra = [
            (v, c, (v - 1) // interval_us - 1)
            for v, c in recorded
            if interval_us > 0 and v >= 2 * interval_us
        ]
        self.total = (self.cumulative[-1] if recorded else 0) + sum(c * k for _, c, k in self.extra)
        self.max = self.values[-1] if recorded else 0

    def count_at_or_below(self, x: int) -> int:
        """Raw and synthetic samples with a value of at most ``x`` microseconds."""
        i = bisect_left(self.values, x + 1)
        n = self.cumulative[i - 1] if i else 0
        step = self.interval
        for v, c, k_max in self.extra:
            k_min = max(1, -((x - v) // step))  # smallest k with v - k*step <= x
            if k_max >= k_min:
                n += c * (k_max - k_min + 1)
        return n

    def value_at_percentile(self, percentile: float) -> int:
        """The smallest value with ``percentile`` % of the samples at or below it.

        The rank is HdrHistogram's (as for the raw percentiles), found by bisection.
        """
        if self.total == 0:
            return 0
        rank = max(int(min(percentile, 100.0) * self.total / 100 + 0.5), 1)
        lo, hi = 0, self.max
        while lo < hi:
            mid = (lo + hi) // 2
            if self.count_at_or_below(mid) >= rank:
                hi = mid
            else:
                lo = mid + 1
        return lo

    def mean(self) -> float:
        if self.total == 0:
            return 0.0
        raw = sum(v * c for v, c in self.recorded)
        step = self.interval
        synthetic = sum(c * (k * v - step * k * (k + 1) // 2) for v, c, k in self.extra)
        return (raw + synthetic) / self.total


@dataclass
class Report:
    plan: Plan
    histogram: HdrHistogram
    statuses: dict[str, int] = field(default_factory=dict)
    transport_errors: dict[str, int] = field(default_factory=dict)
    duration_seconds: float = 0.0
    slo_p99_ms: float | None = None
    slo_error_rate: float | None = None

    @classmethod
    def merge(cls, plan: Plan, parts: list[dict[str, Any]]) -> Report:
        hist = new_histogram()
        statuses: dict[str, int] = {}
        errors: dict[str, int] = {}
        for part in parts:
            if part["histogram"]:
                hist.decode_and_add(part["histogram"])
            for key, n in part["statuses"].items():
                statuses[str(key)] = statuses.get(str(key), 0) + n
            for key, n in part["errors"].items():
                errors[key] = errors.get(key, 0) + n
        duration = max((p["duration"] for p in parts), default=0.0)
        return cls(
            plan, hist, dict(sorted(statuses.items())), dict(sorted(errors.items())), duration
        )

    @property
    def requests(self) -> int:
        """Answers received in the measured window (whatever their status)."""
        return sum(self.statuses.values())

    @property
    def error_kinds(self) -> dict[str, int]:
        """Transport errors by kind, plus answers that say the request failed."""
        kinds = dict(self.transport_errors)
        for status, n in self.statuses.items():
            kind = self._status_error(status)
            if kind is not None:
                kinds[kind] = kinds.get(kind, 0) + n
        return dict(sorted(kinds.items()))

    def _status_error(self, status: str) -> str | None:
        if self.plan.kind == "http":
            code = int(status)
            return f"http_{code // 100}xx" if code >= 400 else None
        if status in GOOD_TCP:
            return None
        return status.lower().replace(" ", "_")

    @property
    def errors(self) -> int:
        return sum(self.error_kinds.values())

    @property
    def error_rate(self) -> float:
        attempts = self.requests + sum(self.transport_errors.values())
        return self.errors / attempts if attempts else 0.0

    @property
    def requests_per_second(self) -> float:
        return self.requests / self.duration_seconds if self.duration_seconds > 0 else 0.0

    def latency_ms(self) -> dict[str, float]:
        h = self.histogram
        if h.get_total_count() == 0:
            return {name: 0.0 for name, _ in PERCENTILES} | {"max": 0.0, "mean": 0.0}
        out = {name: h.get_value_at_percentile(p) / 1000 for name, p in PERCENTILES}
        out["max"] = h.get_max_value() / 1000
        out["mean"] = round(h.get_mean_value() / 1000, 3)
        return out

    @property
    def co_interval_us(self) -> int:
        """wrk's correction interval for this run; 0 for an open loop (nothing to correct)."""
        if self.plan.open_loop:
            return 0
        return wrk_interval_us(self.requests, self.plan.concurrency, self.duration_seconds)

    def latency_ms_co_corrected(self) -> dict[str, float] | None:
        """Closed loop: the percentiles as wrk ``--latency`` computes them (see the module doc).

        None for an open loop: it already times each request from its intended
        send time, so there is no omission to correct.
        """
        if self.plan.open_loop:
            return None
        corrected = WrkCorrected(self.histogram, self.co_interval_us)
        if corrected.total == 0:
            return self.latency_ms()
        out = {name: corrected.value_at_percentile(p) / 1000 for name, p in PERCENTILES}
        out["max"] = corrected.max / 1000
        out["mean"] = round(corrected.mean() / 1000, 3)
        return out

    def slo_breaches(self) -> list[str]:
        """Human-readable reasons the SLO is broken (empty: met, or none set)."""
        broken = []
        if self.slo_p99_ms is not None:
            p99 = self.latency_ms()["p99"]
            if self.requests == 0:
                broken.append("p99: no answers at all")
            elif p99 > self.slo_p99_ms:
                broken.append(f"p99 {p99:.3f} ms > {self.slo_p99_ms:g} ms")
        if self.slo_error_rate is not None and self.error_rate > self.slo_error_rate:
            broken.append(f"error rate {self.error_rate:.4%} > {self.slo_error_rate:.4%}")
        return broken

    def to_json(self) -> dict[str, Any]:
        plan = self.plan
        return {
            "target": plan.target,
            "scenario": plan.scenario,
            "mode": "open" if plan.open_loop else "closed",
            "concurrency": plan.concurrency,
            "rate": plan.rate,
            "workers": plan.workers,
            "warmup_seconds": plan.warmup,
            "requests": self.requests,
            "errors": self.errors,
            "error_rate": self.error_rate,
            "duration_seconds": round(self.duration_seconds, 6),
            "requests_per_second": round(self.requests_per_second, 3),
            "latency_ms": self.latency_ms(),
            "latency_ms_co_corrected": self.latency_ms_co_corrected(),
            "co_interval_ms": self.co_interval_us / 1000 if not plan.open_loop else None,
            "statuses": self.statuses,
            "error_kinds": self.error_kinds,
            "slo": {
                "p99_ms": self.slo_p99_ms,
                "error_rate": self.slo_error_rate,
                "broken": self.slo_breaches(),
            },
        }

    def text(self) -> str:
        plan = self.plan
        loop = (
            f"open loop at {plan.rate:g} req/s over {plan.concurrency} connections"
            if plan.rate is not None
            else f"closed loop, {plan.concurrency} connections"
        )
        lat = self.latency_ms()
        fmt = "  ".join(
            f"{name.replace('p999', 'p99.9')} {{{name}:.3f}}"
            for name in ("p50", "p90", "p99", "p999", "max")
        )
        lines = [
            f"target      {plan.target}  ({plan.scenario}; {loop}; "
            f"{plan.workers} worker{'s' if plan.workers > 1 else ''})",
            f"duration    {self.duration_seconds:.2f} s"
            + (f" after {plan.warmup:g} s warmup" if plan.warmup else ""),
            f"requests    {self.requests:,}  ({self.requests_per_second:,.1f} req/s)",
            f"errors      {self.errors:,}  ({self.error_rate:.2%})",
            "latency ms  " + fmt.format(**lat),
            "statuses    " + (", ".join(f"{k}: {v:,}" for k, v in self.statuses.items()) or "none"),
        ]
        corrected = self.latency_ms_co_corrected()
        if corrected is not None and self.requests:
            lines.insert(
                5,
                "  as wrk    "
                + fmt.format(**corrected)
                + f"  (wrk's coordinated-omission correction, "
                f"interval {self.co_interval_us / 1000:.3f} ms)",
            )
        if self.error_kinds:
            lines.append(
                "error kinds " + ", ".join(f"{k}: {v:,}" for k, v in self.error_kinds.items())
            )
        if self.slo_p99_ms is not None or self.slo_error_rate is not None:
            broken = self.slo_breaches()
            lines.append("SLO         " + ("BROKEN: " + "; ".join(broken) if broken else "met"))
        return "\n".join(lines)
