"""The supervisor's parts on their own: the merged exposition, the CPU count, file names."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.openmetrics import exposition as openmetrics
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from service.runtime.metrics import Metrics
from service.runtime.workers.count import cpu_quota, usable_cpus, worker_count
from service.runtime.workers.exposition import merge, supervisor_families
from service.runtime.workers.link import worker_path
from service.runtime.workers.slots import Slot
from tests.support.process import parse_metrics, require_tool


def _worker_exposition(requests: int) -> str:
    metrics = Metrics("service")
    metrics.http_requests.labels("GET", "/v1/info", "200").value += requests
    metrics.http_duration.labels("GET", "/v1/info").observe(0.002)
    metrics.ready_child.set(1)
    return generate_latest(metrics.registry).decode()


def test_merged_exposition_labels_every_worker_and_passes_promtool() -> None:
    slots = [Slot(1, restarts=2), Slot(2)]
    body = merge(
        {"1": _worker_exposition(5), "2": _worker_exposition(7)},
        supervisor_families("service", slots, ["1"]),
    )
    text = body.decode()
    # One HELP and TYPE per family, whoever has it.
    assert text.count("# TYPE service_http_requests_total counter\n") == 1
    assert text.count("# TYPE process_cpu_seconds_total counter\n") == 1
    samples = parse_metrics(text)
    key = 'service_http_requests_total{method="GET",route="/v1/info",status="200",worker="%s"}'
    assert samples[key % "1"] == 5
    assert samples[key % "2"] == 7
    assert samples['service_ready{worker="1"}'] == samples['service_ready{worker="2"}'] == 1
    assert (
        samples[
            'service_http_request_duration_seconds_count{method="GET",route="/v1/info",worker="2"}'
        ]
        == 1
    )
    assert any(k.startswith('process_resident_memory_bytes{worker="2"}') for k in samples)
    # Every worker sample is labelled; the supervisor's own series are its own.
    assert samples["service_workers_desired"] == 2
    assert samples['service_worker_restarts_total{worker="1"}'] == 2
    assert samples['service_worker_up{worker="1"}'] == 1
    assert samples['service_worker_up{worker="2"}'] == 0
    unlabelled = [k for k in samples if "worker=" not in k]
    assert unlabelled == ["service_workers_desired", "service_workers_alive"]
    promtool = require_tool("promtool")
    check = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True)
    assert check.returncode == 0, check.stdout + check.stderr


def test_openmetrics_merge_keeps_each_workers_exemplars() -> None:
    texts = {}
    for worker, trace_id in (("1", "a" * 32), ("2", "b" * 32)):
        metrics = Metrics("service")
        child = metrics.http_duration.labels("GET", "/v1/info")
        child.observe(0.002)
        child.exemplar(0, trace_id, 0.002, 1.0)
        texts[worker] = openmetrics.generate_latest(metrics.registry).decode()
    body = merge(
        texts,
        supervisor_families("service", [Slot(1), Slot(2)], list(texts)),
        openmetrics.generate_latest,
        openmetrics=True,
    ).decode()
    assert body.endswith("# EOF\n")
    exemplars = {
        s.labels["worker"]: s.exemplar.labels["trace_id"]
        for family in text_string_to_metric_families(body)
        for s in family.samples
        if s.exemplar is not None
    }
    assert exemplars == {"1": "a" * 32, "2": "b" * 32}


def test_no_worker_answering_still_gives_the_supervisor_metrics() -> None:
    samples = parse_metrics(merge({}, supervisor_families("svc", [Slot(1)], [])).decode())
    assert samples == {
        "svc_workers_desired": 1,
        "svc_workers_alive": 0,
        'svc_worker_restarts_total{worker="1"}': 0,
        'svc_worker_up{worker="1"}': 0,
    }


def test_worker_files_sit_next_to_the_configured_one() -> None:
    assert worker_path(Path("data/events.jsonl"), 1) == Path("data/events.w1.jsonl")
    assert worker_path(Path("/x/events"), 12) == Path("/x/events.w12")


def _cgroup(tmp_path: Path, v2: str | None = None, v1: tuple[str, str] | None = None) -> Path:
    if v2 is not None:
        (tmp_path / "cpu.max").write_text(v2)
    if v1 is not None:
        (tmp_path / "cpu").mkdir()
        (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text(v1[0])
        (tmp_path / "cpu" / "cpu.cfs_period_us").write_text(v1[1])
    return tmp_path


@pytest.mark.parametrize(
    ("v2", "v1", "quota"),
    [
        ("max 100000\n", None, None),
        ("150000 100000\n", None, 1.5),
        ("50000 100000\n", None, 0.5),
        (None, ("-1", "100000"), None),
        (None, ("200000", "100000"), 2.0),
        (None, None, None),
    ],
)
def test_cpu_quota_of_the_cgroup(
    tmp_path: Path, v2: str | None, v1: tuple[str, str] | None, quota: float | None
) -> None:
    assert cpu_quota(_cgroup(tmp_path, v2, v1)) == quota


def test_usable_cpus_is_the_affinity_capped_by_the_quota_rounded_up(tmp_path: Path) -> None:
    affinity = len(os.sched_getaffinity(0))
    cases = {"none": None, "half": "50000 100000", "one_and_a_half": "150000 100000"}
    cases["more"] = f"{(affinity + 3) * 100000} 100000"
    got = {}
    for name, v2 in cases.items():
        (tmp_path / name).mkdir()
        got[name] = usable_cpus(_cgroup(tmp_path / name, v2))
    assert got == {
        "none": affinity,
        "half": 1,
        "one_and_a_half": min(affinity, 2),
        "more": affinity,
    }
    assert worker_count(3) == 3
    assert worker_count(0) == usable_cpus()
