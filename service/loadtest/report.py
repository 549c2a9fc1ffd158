"""Merging what the workers measured into one report; text, JSON and the SLO verdict.

Each worker ships its latencies as an encoded HdrHistogram (the compressed
wire format of the HdrHistogram family), so the merged percentiles are those
of all requests, not an average of per-worker percentiles (which is wrong for
tails). Values are microseconds with 3 significant digits.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hdrh.histogram import HdrHistogram

from service.loadtest.driver import Measured
from service.loadtest.plan import Plan

HIGHEST_US = 3_600_000_000  # one hour: any real latency fits
PERCENTILES = (("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p999", 99.9))
GOOD_TCP = ("PONG", "OK")


def new_histogram() -> HdrHistogram:
    return HdrHistogram(1, HIGHEST_US, 3)


def to_wire(m: Measured) -> dict[str, Any]:
    """One worker's result as plain picklable data (histogram encoded)."""
    hist = new_histogram()
    for us, count in m.latencies_us.items():
        hist.record_value(min(max(us, 1), HIGHEST_US), count)
    return {"histogram": hist.encode(), "statuses": dict(m.statuses),
            "errors": dict(m.errors), "duration": m.duration}


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
        return cls(plan, hist, dict(sorted(statuses.items())), dict(sorted(errors.items())),
                   duration)

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
            "statuses": self.statuses,
            "error_kinds": self.error_kinds,
            "slo": {"p99_ms": self.slo_p99_ms, "error_rate": self.slo_error_rate,
                    "broken": self.slo_breaches()},
        }

    def text(self) -> str:
        plan = self.plan
        loop = (f"open loop at {plan.rate:g} req/s over {plan.concurrency} connections"
                if plan.rate is not None else f"closed loop, {plan.concurrency} connections")
        lat = self.latency_ms()
        lines = [
            f"target      {plan.target}  ({plan.scenario}; {loop}; "
            f"{plan.workers} worker{'s' if plan.workers > 1 else ''})",
            f"duration    {self.duration_seconds:.2f} s"
            + (f" after {plan.warmup:g} s warmup" if plan.warmup else ""),
            f"requests    {self.requests:,}  ({self.requests_per_second:,.1f} req/s)",
            f"errors      {self.errors:,}  ({self.error_rate:.2%})",
            "latency ms  " + "  ".join(f"{name.replace('p999', 'p99.9')} {lat[name]:.3f}"
                                       for name in ("p50", "p90", "p99", "p999", "max")),
            "statuses    " + (", ".join(f"{k}: {v:,}" for k, v in self.statuses.items())
                              or "none"),
        ]
        if self.error_kinds:
            lines.append("error kinds " + ", ".join(f"{k}: {v:,}"
                                                    for k, v in self.error_kinds.items()))
        if self.slo_p99_ms is not None or self.slo_error_rate is not None:
            broken = self.slo_breaches()
            lines.append("SLO         " + ("BROKEN: " + "; ".join(broken) if broken else "met"))
        return "\n".join(lines)
