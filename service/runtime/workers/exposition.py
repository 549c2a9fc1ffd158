"""One exposition for the whole service: the workers' metrics, each labelled, and the supervisor's.

Each worker serves its own ``/metrics`` on a private loopback port; the
supervisor scrapes them all when it is scraped and merges them here: every
sample gains a ``worker`` label (``"1"``, ``"2"``...), the samples of one
family from all workers go under one ``# HELP``/``# TYPE``, and the
supervisor's own families are added. Parsing and rendering are
prometheus_client's own (its text parser, ``generate_latest``), so the result
is what a registry would render: a counter's family name loses ``_total`` in
the parser and gains it back in the renderer.

A worker that is starting again has no series for a scrape or two; its
counters start from zero, which Prometheus's ``rate()`` takes as a reset.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.openmetrics import parser as openmetrics_parser
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from service.runtime.workers.slots import Slot

LABEL = "worker"


class _Families:
    """A collector that yields families made elsewhere (for ``generate_latest``)."""

    def __init__(self, families: Sequence[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return self._families


def merge(
    expositions: Mapping[str, str],
    extra: Sequence[Metric] = (),
    encode: Callable[[CollectorRegistry], bytes] = generate_latest,
    *,
    openmetrics: bool = False,
) -> bytes:
    """The expositions by worker name as one, with a ``worker`` label; then ``extra``.

    ``openmetrics``: the workers' texts are OpenMetrics (their exemplars are
    kept, for ``encode`` to render in that format too); else the classic text format.
    """
    parse = openmetrics_parser.text_string_to_metric_families if openmetrics else None
    families: dict[str, Metric] = {}
    for worker, text in expositions.items():
        for family in (parse or text_string_to_metric_families)(text):
            merged = families.get(family.name)
            if merged is None:
                merged = Metric(family.name, family.documentation, family.type, family.unit)
                families[family.name] = merged
            merged.samples.extend(
                Sample(s.name, {LABEL: worker, **s.labels}, s.value, s.timestamp, s.exemplar)
                for s in family.samples
            )
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families([*families.values(), *extra]))
    return encode(registry)


def supervisor_families(
    namespace: str, slots: Sequence[Slot], scraped: Iterable[str]
) -> list[Metric]:
    """The supervisor's own metrics: workers wanted and alive, restarts, scrapes."""
    wanted = GaugeMetricFamily(
        f"{namespace}_workers_desired", "Worker processes the supervisor keeps running."
    )
    wanted.add_metric([], len(slots))
    alive = GaugeMetricFamily(f"{namespace}_workers_alive", "Worker processes running now.")
    alive.add_metric([], sum(slot.alive for slot in slots))
    restarts = CounterMetricFamily(
        f"{namespace}_worker_restarts",
        "Worker processes started again after one exited.",
        labels=[LABEL],
    )
    up = GaugeMetricFamily(
        f"{namespace}_worker_up",
        "1 when the worker's own metrics are in this scrape.",
        labels=[LABEL],
    )
    done = set(scraped)
    for slot in slots:
        name = str(slot.index)
        restarts.add_metric([name], slot.restarts)
        up.add_metric([name], 1.0 if name in done else 0.0)
    return [wanted, alive, restarts, up]
