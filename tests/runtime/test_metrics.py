"""Metrics: promtool-clean exposition, SPEC names, bounded labels, inclusive buckets."""

from __future__ import annotations

import subprocess

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import generate_latest

from service.app import create_app
from service.runtime.keys import METRICS
from service.runtime.metrics import Histogram, Metrics
from tests.support.process import http_get, parse_metrics, require_tool, running_service
from tests.support.settings import make_settings

# The contract's metrics (docs/contract.md) that the runtime owns, with their types.
SPINE_METRICS = {
    "service_http_requests_total": "counter",
    "service_http_request_duration_seconds": "histogram",
    "service_http_requests_in_flight": "gauge",
    "service_ready": "gauge",
    "service_event_loop_lag_seconds": "histogram",
    "service_asyncio_tasks": "gauge",
    "service_asyncio_tasks_finished_total": "counter",
}


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_real_metrics_pass_promtool_and_name_every_spine_metric(loop: str) -> None:
    promtool = require_tool("promtool")
    with running_service(env={"SERVICE_LOOP__KIND": loop}) as svc:
        for path in ("/livez", "/v1/info", "/nope"):
            http_get(svc.url(path))
        status, headers, body = http_get(svc.url("/metrics", "admin"))
        svc.stop()
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version=")
    check = subprocess.run(
        [promtool, "check", "metrics"], input=body, capture_output=True, timeout=30
    )
    assert check.returncode == 0, check.stdout + check.stderr
    text = body.decode()
    for name, kind in SPINE_METRICS.items():
        assert f"# TYPE {name} {kind}\n" in text, name
    samples = parse_metrics(text)
    assert samples["service_ready"] == 1.0
    assert samples['service_http_requests_total{method="GET",route="/v1/info",status="200"}'] == 1
    assert samples['service_http_requests_total{method="GET",route="unmatched",status="404"}'] == 1
    assert samples["service_event_loop_lag_seconds_count"] > 0
    assert any(k.startswith("process_resident_memory_bytes") for k in samples)
    assert any(k.startswith("python_gc_collections_total") for k in samples)
    assert 'service_asyncio_tasks{group="monitor",state="pending"}' in samples


def _templated_app() -> web.Application:
    app = create_app(make_settings())

    async def summary(request: web.Request) -> web.Response:
        return web.json_response({"user": request.match_info["user_id"]})

    async def anything(request: web.Request) -> web.Response:
        return web.Response(text=request.method)

    app.router.add_get("/v1/things/{user_id}/summary", summary)
    app.router.add_route("*", "/any", anything)
    return app


@pytest.mark.asyncio
async def test_route_label_is_the_template_never_the_raw_path() -> None:
    app = _templated_app()
    async with TestClient(TestServer(app)) as client:
        for uid in ("u1", "u2", "secret-user-77"):
            assert (await client.get(f"/v1/things/{uid}/summary")).status == 200
        assert (await client.get("/random/raw-path-123")).status == 404
    text = generate_latest(app[METRICS].registry).decode()
    samples = parse_metrics(text)
    key = (
        'service_http_requests_total{method="GET",route="/v1/things/{user_id}/summary",'
        'status="200"}'
    )
    assert samples[key] == 3
    for raw in ("u1", "u2", "secret-user-77", "raw-path-123"):
        assert raw not in text
    assert samples['service_http_requests_total{method="GET",route="unmatched",status="404"}'] == 1


@pytest.mark.asyncio
async def test_unknown_methods_collapse_into_other() -> None:
    app = _templated_app()
    async with TestClient(TestServer(app)) as client:
        for method in ("PROPFIND", "MKCOL", "PURGE"):
            resp = await client.request(method, "/any")
            assert resp.status == 200
        assert (await client.request("PROPFIND", "/v1/info")).status == 405
        assert (await client.post("/any")).status == 200
    samples = parse_metrics(generate_latest(app[METRICS].registry).decode())
    methods = {
        k.split('method="')[1].split('"')[0]
        for k in samples
        if k.startswith("service_http_requests_total{")
    }
    assert methods == {"other", "POST"}
    assert samples['service_http_requests_total{method="other",route="/any",status="200"}'] == 3
    assert (
        samples['service_http_requests_total{method="other",route="unmatched",status="405"}'] == 1
    )


def test_histogram_bucket_bounds_are_inclusive() -> None:
    hist = Histogram("t_seconds", "doc", buckets=(0.1, 0.5, 1.0))
    child = hist.labels()
    for value in (0.1, 0.5, 0.5000001, 1.0, 1.5, 0.0):
        child.observe(value)
    fam = hist.collect()
    buckets = {s.labels["le"]: s.value for s in fam.samples if s.name.endswith("_bucket")}
    assert buckets == {"0.1": 2, "0.5": 3, "1.0": 5, "+Inf": 6}
    assert child.count == 6
    assert child.sum == pytest.approx(3.6000001)


def test_labels_are_cached_and_checked() -> None:
    m = Metrics("t")
    a = m.http_requests.labels("GET", "/r", "200")
    assert m.http_requests.labels("GET", "/r", "200") is a
    with pytest.raises(ValueError, match="takes labels"):
        m.http_requests.labels("GET")


def test_gauge_functions_are_read_at_scrape_time() -> None:
    m = Metrics("t")
    depth = [3]
    m.queue_depth.set_function(lambda: depth[0], "ingest")
    m.queue_depth.labels("ingest").set(99)  # the function wins for the same labels
    depth[0] = 7
    samples = parse_metrics(generate_latest(m.registry).decode())
    assert samples['t_pipeline_queue_depth{stage="ingest"}'] == 7


def test_namespace_prefixes_every_fast_metric() -> None:
    text = generate_latest(Metrics("acme").registry).decode()
    names = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")}
    ours = {n for n in names if not n.startswith(("process_", "python_"))}
    assert ours
    assert all(n.startswith("acme_") for n in ours), ours
