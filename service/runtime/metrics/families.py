"""Lock-free metric families for the hot paths, exported through prometheus-client.

The hot paths (one HTTP request, one TCP line, one pipeline event) update
plain Python numbers: prometheus-client takes a lock on every ``inc`` and
scans histogram buckets linearly, which costs more than the rest of a cheap
request. Each child has one writer: the event loop thread for the hot paths
(executor jobs report back through their future), a component's own thread
for its own (the watchdog's stall count). A scrape reads them from the
admin listener's thread (``service.runtime.admin``) without a lock: reading
a number, or listing a family's children, is atomic under the GIL; a
histogram's count and sum may be read one observation apart.
prometheus-client still does the exposition and ``promtool``-clean text.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Generic, TypeVar

from prometheus_client.core import (
    CounterMetricFamily,
    Exemplar,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

# Latency buckets in seconds, from sub-millisecond (loopback) to the deadlines.
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
LAG_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)


class CounterChild:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount


class GaugeChild(CounterChild):
    __slots__ = ()

    def set(self, value: float) -> None:
        self.value = value

    def dec(self, amount: float = 1.0) -> None:
        self.value -= amount


class HistogramChild:
    __slots__ = ("bounds", "counts", "exemplars", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0
        # Per bucket, the last traced observation's (trace id, value, Unix time):
        # exported as OpenMetrics exemplars. None until one is kept (tracing on).
        self.exemplars: list[tuple[str, float, float] | None] | None = None

    def exemplar(self, bucket: int, trace_id: str, value: float, when: float) -> None:
        """Keep ``trace_id`` as bucket ``bucket``'s exemplar (the caller has observed ``value``)."""
        exemplars = self.exemplars
        if exemplars is None:
            exemplars = self.exemplars = [None] * len(self.counts)
        exemplars[bucket] = (trace_id, value, when)

    def observe(self, value: float) -> None:
        # bisect_left: a value equal to a bound belongs to that bucket (le is inclusive).
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def observe_many(self, value: float, count: int) -> None:
        """``count`` observations of the same value (e.g. a batch acknowledged together)."""
        self.counts[bisect_left(self.bounds, value)] += count
        self.sum += value * count

    @property
    def count(self) -> int:
        return sum(self.counts)


ChildT = TypeVar("ChildT")


class _Family(Generic[ChildT]):
    """A labelled family whose children are created once and then reused.

    Call ``labels(...)`` once per label set and keep the child where the hot
    path can reach it; the dictionary lookup is the only per-call cost left.
    """

    kind = ""

    def __init__(self, name: str, doc: str, labelnames: Sequence[str] = ()) -> None:
        self.name = name
        self.doc = doc
        self.labelnames = tuple(labelnames)
        self._children: dict[tuple[str, ...], ChildT] = {}

    def _new_child(self) -> ChildT:
        raise NotImplementedError

    def labels(self, *values: str) -> ChildT:
        child = self._children.get(values)
        if child is None:
            if len(values) != len(self.labelnames):
                raise ValueError(f"{self.name} takes labels {self.labelnames}, got {values}")
            child = self._children[values] = self._new_child()
        return child

    def children(self) -> Iterator[tuple[tuple[str, ...], ChildT]]:
        return iter(list(self._children.items()))


class Counter(_Family[CounterChild]):
    kind = "counter"

    def _new_child(self) -> CounterChild:
        return CounterChild()

    def collect(self) -> Metric:
        fam = CounterMetricFamily(self.name, self.doc, labels=self.labelnames)
        for values, child in self.children():
            fam.add_metric(values, child.value)
        return fam


class Gauge(_Family[GaugeChild]):
    """A gauge set by the code, or read at scrape time from ``set_function`` callbacks."""

    kind = "gauge"

    def __init__(self, name: str, doc: str, labelnames: Sequence[str] = ()) -> None:
        super().__init__(name, doc, labelnames)
        self._functions: dict[tuple[str, ...], Callable[[], float]] = {}

    def _new_child(self) -> GaugeChild:
        return GaugeChild()

    def set_function(self, fn: Callable[[], float], *values: str) -> None:
        self._functions[values] = fn

    def remove_function(self, *values: str) -> None:
        self._functions.pop(values, None)

    def collect(self) -> Metric:
        fam = GaugeMetricFamily(self.name, self.doc, labels=self.labelnames)
        for values, child in self.children():
            if values not in self._functions:
                fam.add_metric(values, child.value)
        for values, fn in list(self._functions.items()):
            fam.add_metric(values, float(fn()))
        return fam


class Histogram(_Family[HistogramChild]):
    kind = "histogram"

    def __init__(
        self,
        name: str,
        doc: str,
        labelnames: Sequence[str] = (),
        buckets: tuple[float, ...] = LATENCY_BUCKETS,
    ) -> None:
        super().__init__(name, doc, labelnames)
        self.buckets = tuple(sorted(buckets))

    def _new_child(self) -> HistogramChild:
        return HistogramChild(self.buckets)

    def collect(self) -> Metric:
        fam = HistogramMetricFamily(self.name, self.doc, labels=self.labelnames)
        for values, child in self.children():
            cumulative: list[Any] = []
            acc = 0
            exemplars = child.exemplars or ()
            for i, (bound, count) in enumerate(
                zip((*self.buckets, float("inf")), child.counts, strict=True)
            ):
                acc += count
                kept = exemplars[i] if exemplars else None
                if kept is None:
                    cumulative.append((_le(bound), acc))
                else:  # only the OpenMetrics exposition shows it
                    trace_id, value, when = kept
                    cumulative.append(
                        (_le(bound), acc, Exemplar({"trace_id": trace_id}, value, when))
                    )
            fam.add_metric(list(values), cumulative, child.sum)
        return fam


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(float(bound))


class FastCollector(Collector):
    """Exports the families; first runs the hooks of producers that count in batches."""

    def __init__(
        self, families: Iterable[Counter | Gauge | Histogram], before: Iterable[Callable[[], None]]
    ) -> None:
        self._families = families
        self._before = before

    def collect(self) -> Iterable[Metric]:
        for settle in self._before:
            settle()
        for family in self._families:
            yield family.collect()
