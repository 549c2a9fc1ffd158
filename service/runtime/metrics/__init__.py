"""Prometheus metrics: lock-free families, the runtime's catalogue, task groups.

* :mod:`.families`: counters, gauges and histograms updated as plain numbers;
* :mod:`.catalogue`: :class:`Metrics`, every runtime metric in one registry;
* :mod:`.tasks`: task groups and the live task gauge.
"""

from service.runtime.metrics.catalogue import TASK_OUTCOMES, Metrics
from service.runtime.metrics.families import (
    BATCH_BUCKETS,
    LAG_BUCKETS,
    LATENCY_BUCKETS,
    Counter,
    CounterChild,
    Gauge,
    GaugeChild,
    Histogram,
    HistogramChild,
)
from service.runtime.metrics.tasks import TaskGroups, end_normally, ended_normally

__all__ = [
    "BATCH_BUCKETS",
    "LAG_BUCKETS",
    "LATENCY_BUCKETS",
    "TASK_OUTCOMES",
    "Counter",
    "CounterChild",
    "Gauge",
    "GaugeChild",
    "Histogram",
    "HistogramChild",
    "Metrics",
    "TaskGroups",
    "end_normally",
    "ended_normally",
]
