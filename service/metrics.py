"""Every metric of the service, defined once, and the collector that exports them.

The hot paths (one HTTP request, one TCP line, one pipeline event) update
plain Python numbers: prometheus-client takes a lock on every ``inc`` and
scans histogram buckets linearly, which costs more than the rest of a cheap
request (see ../shared/PERF-NOTES.md). These metrics are owned by the event
loop thread: update them only from the loop (executor jobs report back
through their future), and scrape them from the loop (the admin handler),
so no lock is needed. prometheus-client still does the exposition, the
process and GC collectors, and ``promtool``-clean text.

This module defines metrics and how they are read; it does not start tasks
(``service.monitor`` does) and is never imported for side effects.
"""

from __future__ import annotations

import asyncio
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Generic, TypeVar

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

# Latency buckets in seconds, from sub-millisecond (loopback) to the deadlines.
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)
LAG_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)

# The fixed set of task groups; a task's group is the part of its name before ":".
TASK_GROUPS = (
    "http", "tcp", "pipeline", "downstream", "offload", "stream", "monitor", "lifecycle", "other",
)
TASK_STATES = ("pending", "running", "cancelling")


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
    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

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
FamT = TypeVar("FamT", "Counter", "Gauge", "Histogram")


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
            cumulative, acc = [], 0
            for bound, count in zip((*self.buckets, float("inf")), child.counts, strict=True):
                acc += count
                cumulative.append((_le(bound), acc))
            fam.add_metric(list(values), cumulative, child.sum)
        return fam


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(float(bound))


class TaskStateCollector:
    """``<ns>_asyncio_tasks{group,state}``: counts every live task of the loop at scrape time.

    Reading ``asyncio.all_tasks`` at scrape time costs nothing per task
    created, and sees tasks that libraries create without a task factory
    (aiohttp builds its request tasks directly on 3.12+).
    """

    def __init__(self, name: str, classify: Callable[[asyncio.Task[object]], str]) -> None:
        self.name = name
        self.classify = classify
        self.loop: asyncio.AbstractEventLoop | None = None

    def collect(self) -> Iterable[Metric]:
        counts = {(g, s): 0 for g in TASK_GROUPS for s in TASK_STATES}
        if self.loop is not None and not self.loop.is_closed():
            current = asyncio.current_task(self.loop) if self.loop.is_running() else None
            for task in asyncio.all_tasks(self.loop):
                if task is current:
                    state = "running"
                elif task.cancelling():
                    state = "cancelling"
                else:
                    state = "pending"
                counts[(self.classify(task), state)] += 1
        fam = GaugeMetricFamily(
            self.name, "Live asyncio tasks by group and state.", labels=("group", "state")
        )
        for (group, state), n in counts.items():
            fam.add_metric((group, state), n)
        yield fam


class Metrics:
    """The service's metrics, all in one registry owned by the app (no global state)."""

    def __init__(self, namespace: str = "service") -> None:
        ns = namespace
        self.namespace = ns
        self.registry = CollectorRegistry(auto_describe=False)
        self._families: list[Counter | Gauge | Histogram] = []

        def counter(name: str, doc: str, labels: Sequence[str] = ()) -> Counter:
            return self._add(Counter(f"{ns}_{name}", doc, labels))

        def gauge(name: str, doc: str, labels: Sequence[str] = ()) -> Gauge:
            return self._add(Gauge(f"{ns}_{name}", doc, labels))

        def histogram(
            name: str, doc: str, labels: Sequence[str] = (),
            buckets: tuple[float, ...] = LATENCY_BUCKETS,
        ) -> Histogram:
            return self._add(Histogram(f"{ns}_{name}", doc, labels, buckets))

        # HTTP (service.middleware)
        self.http_requests = counter(
            "http_requests_total", "HTTP requests answered.", ("method", "route", "status"))
        self.http_duration = histogram(
            "http_request_duration_seconds", "HTTP request duration.", ("method", "route"))
        self.http_in_flight = gauge("http_requests_in_flight", "HTTP requests being handled.")
        self.http_header_timeouts = counter(
            "http_header_timeouts_total", "Connections closed for not sending headers in time.")
        # TCP (service.tcp)
        self.tcp_active = gauge("tcp_connections_active", "Open TCP client connections.")
        self.tcp_connections = counter(
            "tcp_connections_total", "TCP connections by result.", ("result",))
        self.tcp_messages = counter(
            "tcp_messages_total", "TCP lines answered by result.", ("result",))
        # asyncio (service.monitor)
        self.tasks_finished = counter(
            "asyncio_tasks_finished_total", "Named asyncio tasks that ended, by outcome.",
            ("group", "outcome"))
        self.loop_lag = histogram(
            "event_loop_lag_seconds", "Delay of the loop monitor's wake-ups past their due time.",
            buckets=LAG_BUCKETS)
        # Pipeline (service.pipeline)
        self.queue_depth = gauge(
            "pipeline_queue_depth", "Items waiting in a pipeline queue.", ("stage",))
        self.queue_capacity = gauge(
            "pipeline_queue_capacity", "Capacity of a pipeline queue.", ("stage",))
        self.pipeline_events = counter(
            "pipeline_events_total", "Events by pipeline stage and outcome.", ("stage", "outcome"))
        self.pipeline_latency = histogram(
            "pipeline_event_latency_seconds", "From acknowledgement to durable in the sink.")
        self.pipeline_rejected = counter(
            "pipeline_rejections_total", "Events refused at intake, by reason.", ("reason",))
        self.sink_batch = histogram(
            "sink_batch_size", "Events per sink write.", ("backend",), buckets=BATCH_BUCKETS)
        self.sink_write = histogram(
            "sink_write_duration_seconds", "Duration of one sink batch write.", ("backend",))
        self.sink_failures = counter(
            "sink_write_failures_total", "Failed sink writes (retried).", ("backend",))
        self.stream_subscribers = gauge(
            "stream_subscribers", "Clients following /v1/events/stream.")
        self.stream_cutoffs = counter(
            "stream_subscribers_cut_off_total", "Stream subscribers cut off for falling behind.")
        # Downstream (service.downstream)
        self.downstream_requests = counter(
            "downstream_requests_total", "Downstream calls by outcome.", ("service", "outcome"))
        self.downstream_duration = histogram(
            "downstream_request_duration_seconds", "Downstream call duration.", ("service",))
        self.downstream_circuit_open = gauge(
            "downstream_circuit_open", "1 while the service's circuit breaker is open.",
            ("service",))
        self.downstream_retries = counter(
            "downstream_retries_total", "Retried downstream calls.", ("service",))
        self.cache_lookups = counter(
            "enrich_cache_lookups_total", "Enrichment cache lookups by result.", ("result",))
        # Executors (service.offload)
        self.executor_jobs = gauge(
            "executor_jobs", "Executor jobs by state.", ("executor", "state"))
        self.executor_duration = histogram(
            "executor_job_duration_seconds", "Executor job run time.", ("executor",))
        self.executor_rejected = counter(
            "executor_rejected_total", "Jobs refused because the backlog was full.",
            ("executor",))
        # Lifecycle
        self.ready = gauge("ready", "1 while the service accepts traffic.")
        self.ready_child = self.ready.labels()

        self.tasks = TaskStateCollector(f"{ns}_asyncio_tasks", classify=task_group)
        # Producers that count in batches (service.middleware) settle before a scrape.
        self.before_collect: list[Callable[[], None]] = []
        self.registry.register(_FastCollector(self._families, self.before_collect))
        self.registry.register(self.tasks)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)

    def _add(self, family: FamT) -> FamT:
        self._families.append(family)
        return family


class _FastCollector(Collector):
    def __init__(self, families: Iterable[Counter | Gauge | Histogram],
                 before: Iterable[Callable[[], None]]) -> None:
        self._families = families
        self._before = before

    def collect(self) -> Iterable[Metric]:
        for settle in self._before:
            settle()
        for family in self._families:
            yield family.collect()


def task_group(task: asyncio.Task[object]) -> str:
    """The group of a task: its name's prefix before ':' when that is a known group."""
    name = task.get_name()
    group, sep, _ = name.partition(":")
    if sep and group in TASK_GROUPS:
        return group
    # Not every coroutine has a str __qualname__ (uvloop's Cython ones say None).
    qualname = getattr(task.get_coro(), "__qualname__", None)
    if isinstance(qualname, str) and qualname.startswith("RequestHandler."):
        return "http"  # aiohttp's connection and request tasks
    return "other"
