"""The runtime's metric catalogue: every runtime metric, defined once, in one registry.

A domain adds its own metrics through the same :class:`Metrics` object
(``metrics.counter(...)``), so they share the namespace, the registry and
the lock-free families of :mod:`.families`. Components register their task
groups here (:meth:`Metrics.register_task_group`).

This module defines metrics; it starts no task (``service.runtime.monitor``
does) and is never imported for side effects.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector

from service.runtime.metrics.families import (
    BATCH_BUCKETS,
    LAG_BUCKETS,
    LATENCY_BUCKETS,
    Counter,
    FastCollector,
    Gauge,
    Histogram,
)
from service.runtime.metrics.tasks import BUILTIN_GROUPS, TaskGroups, TaskStateCollector

FamT = TypeVar("FamT", Counter, Gauge, Histogram)
TASK_OUTCOMES = ("finished", "cancelled", "failed")


class Metrics:
    """The service's metrics, all in one registry owned by the app (no global state)."""

    def __init__(self, namespace: str = "service") -> None:
        ns = namespace
        self.namespace = ns
        self.registry = CollectorRegistry(auto_describe=False)
        self._families: list[Counter | Gauge | Histogram] = []
        self.task_groups = TaskGroups()

        counter, gauge, histogram = self.counter, self.gauge, self.histogram
        # HTTP (service.runtime.http.middleware)
        self.http_requests = counter(
            "http_requests_total", "HTTP requests answered.", ("method", "route", "status")
        )
        self.http_duration = histogram(
            "http_request_duration_seconds", "HTTP request duration.", ("method", "route")
        )
        self.http_in_flight = gauge("http_requests_in_flight", "HTTP requests being handled.")
        self.http_header_timeouts = counter(
            "http_header_timeouts_total", "Connections closed for not sending headers in time."
        )
        self.http_body_timeouts = counter(
            "http_body_timeouts_total", "Requests answered 408 for not sending their body in time."
        )
        self.http_connections_rejected = counter(
            "http_connections_rejected_total",
            "Connections answered 503 and closed because http.max_connections were open.",
        )
        # TCP (service.runtime.tcp)
        self.tcp_active = gauge("tcp_connections_active", "Open TCP client connections.")
        self.tcp_connections = counter(
            "tcp_connections_total", "TCP connections by result.", ("result",)
        )
        self.tcp_messages = counter(
            "tcp_messages_total", "TCP lines answered by result.", ("result",)
        )
        # asyncio (service.runtime.monitor)
        self.tasks_finished = counter(
            "asyncio_tasks_finished_total",
            "Named asyncio tasks that ended, by outcome.",
            ("group", "outcome"),
        )
        for group in BUILTIN_GROUPS:
            for outcome in TASK_OUTCOMES:
                self.tasks_finished.labels(group, outcome)
        self.loop_lag = histogram(
            "event_loop_lag_seconds",
            "Delay of the loop monitor's wake-ups past their due time.",
            buckets=LAG_BUCKETS,
        )
        self.unhandled_exceptions = counter(
            "asyncio_unhandled_exceptions_total",
            "Exceptions that reached the loop's exception handler (each is logged): "
            "a failed task nobody awaited, a failing callback.",
        )
        # The watchdog thread (service.runtime.watchdog)
        self.loop_stalls = counter(
            "event_loop_stalls_total",
            "Times the event loop ran nothing for loop.stall_seconds or longer.",
        )
        self.loop_stall = gauge(
            "event_loop_stall_seconds",
            "How long the event loop has been stalled (over loop.stall_seconds); 0 while it runs.",
        )
        # Logging (service.runtime.log)
        self.log_dropped = counter(
            "log_dropped_total",
            "Log lines dropped because stdout did not keep up (log.buffer_bytes was full).",
        )
        for family in (self.unhandled_exceptions, self.loop_stalls, self.loop_stall):
            family.labels()  # exported at 0 from the start
        self.log_dropped.labels()
        # Pipeline (service.runtime.pipeline.engine)
        self.queue_depth = gauge(
            "pipeline_queue_depth", "Items waiting in a pipeline queue.", ("stage",)
        )
        self.queue_capacity = gauge(
            "pipeline_queue_capacity", "Capacity of a pipeline queue.", ("stage",)
        )
        self.pipeline_events = counter(
            "pipeline_events_total", "Events by pipeline stage and outcome.", ("stage", "outcome")
        )
        self.pipeline_latency = histogram(
            "pipeline_event_latency_seconds", "From acknowledgement to durable in the sink."
        )
        self.pipeline_rejected = counter(
            "pipeline_rejections_total", "Events refused at intake, by reason.", ("reason",)
        )
        self.sink_batch = histogram(
            "sink_batch_size", "Events per sink write.", ("backend",), buckets=BATCH_BUCKETS
        )
        self.sink_write = histogram(
            "sink_write_duration_seconds", "Duration of one sink batch write.", ("backend",)
        )
        self.sink_failures = counter(
            "sink_write_failures_total", "Failed sink writes (retried).", ("backend",)
        )
        self.stream_subscribers = gauge(
            "stream_subscribers", "Clients following /v1/events/stream."
        )
        self.stream_cutoffs = counter(
            "stream_subscribers_cut_off_total", "Stream subscribers cut off for falling behind."
        )
        # Downstream (service.runtime.downstream)
        self.downstream_requests = counter(
            "downstream_requests_total", "Downstream calls by outcome.", ("service", "outcome")
        )
        self.downstream_duration = histogram(
            "downstream_request_duration_seconds", "Downstream call duration.", ("service",)
        )
        self.downstream_circuit_open = gauge(
            "downstream_circuit_open",
            "1 while the service's circuit breaker is open.",
            ("service",),
        )
        self.downstream_retries = counter(
            "downstream_retries_total", "Retried downstream calls.", ("service",)
        )
        # Executors (service.runtime.offload)
        self.executor_jobs = gauge(
            "executor_jobs", "Executor jobs by state.", ("executor", "state")
        )
        self.executor_duration = histogram(
            "executor_job_duration_seconds", "Executor job run time.", ("executor",)
        )
        self.executor_rejected = counter(
            "executor_rejected_total", "Jobs refused because the backlog was full.", ("executor",)
        )
        # Lifecycle
        self.ready = gauge("ready", "1 while the service accepts traffic.")
        self.ready_child = self.ready.labels()

        self.tasks = TaskStateCollector(f"{ns}_asyncio_tasks", self.task_groups)
        # Producers that count in batches (the HTTP request records) settle before a scrape.
        self.before_collect: list[Callable[[], None]] = []
        self.registry.register(FastCollector(self._families, self.before_collect))
        self.registry.register(self.tasks)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)

    # -- adding metrics: the runtime's catalogue above, a domain's own the same way --
    def counter(self, name: str, doc: str, labels: Sequence[str] = ()) -> Counter:
        """The counter family ``<namespace>_<name>``, made on the first call."""
        return self._add(Counter(f"{self.namespace}_{name}", doc, labels))

    def gauge(self, name: str, doc: str, labels: Sequence[str] = ()) -> Gauge:
        """The gauge family ``<namespace>_<name>``, made on the first call."""
        return self._add(Gauge(f"{self.namespace}_{name}", doc, labels))

    def histogram(
        self,
        name: str,
        doc: str,
        labels: Sequence[str] = (),
        buckets: tuple[float, ...] = LATENCY_BUCKETS,
    ) -> Histogram:
        """The histogram family ``<namespace>_<name>``, made on the first call."""
        return self._add(Histogram(f"{self.namespace}_{name}", doc, labels, buckets))

    def register_task_group(self, name: str) -> str:
        """Register a component's task group; returns the prefix for its task names."""
        prefix = self.task_groups.register(name)
        for outcome in TASK_OUTCOMES:
            self.tasks_finished.labels(name, outcome)  # every series from the start, at 0
        return prefix

    def _add(self, family: FamT) -> FamT:
        # Asking again for a family (a second client of the same kind) returns
        # the first one: one name must be exported once.
        for known in self._families:
            if known.name == family.name:
                if type(known) is not type(family) or known.labelnames != family.labelnames:
                    raise ValueError(f"metric {family.name} exists with another type or labels")
                return known
        self._families.append(family)
        return family
