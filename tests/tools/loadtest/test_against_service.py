"""The client against the real service: its counts are the service's own counters.

The service runs as ``python -m service serve`` (all ports 0); the client runs
in this test's loop. HTTP answers are held against
``service_http_requests_total`` and TCP lines against
``service_tcp_messages_total``, both scraped from the admin port.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.process import ServiceProcess, running_service, scrape
from tests.tools.loadtest.servers import drive, plan_for


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    sink = Path(tmp_path_factory.mktemp("loadtest")) / "events.jsonl"
    with running_service(env={"SERVICE_PIPELINE__SINK_PATH": str(sink)}) as proc:
        yield proc


def counter(proc: ServiceProcess, name: str, **labels: str) -> float:
    samples = scrape(proc.url("/metrics", "admin"))
    return sum(
        value
        for key, value in samples.items()
        if key.startswith(name + "{") and all(f'{k}="{v}"' in key for k, v in labels.items())
    )


@pytest.mark.asyncio
async def test_http_info_count_matches_the_service_counter(service: ServiceProcess) -> None:
    before = counter(service, "service_http_requests_total", route="/v1/info")
    report = await drive(
        plan_for(
            service.ports["http"],
            path="/",
            scenario="info",
            concurrency=4,
            duration=None,
            requests=300,
        )
    )
    after = counter(service, "service_http_requests_total", route="/v1/info")
    assert report.statuses == {"200": 300}
    assert after - before == 300


@pytest.mark.asyncio
async def test_tcp_ping_drives_the_service_tcp_core(service: ServiceProcess) -> None:
    before = counter(service, "service_tcp_messages_total")
    report = await drive(
        plan_for(
            service.ports["tcp"],
            kind="tcp",
            path="",
            scenario="tcp-ping",
            concurrency=4,
            duration=0.5,
        )
    )
    after = counter(service, "service_tcp_messages_total")
    assert report.requests > 50
    assert report.statuses == {"PONG": report.requests}
    assert after - before == report.requests


@pytest.mark.asyncio
async def test_tcp_events_are_acknowledged_by_the_service(service: ServiceProcess) -> None:
    report = await drive(
        plan_for(
            service.ports["tcp"],
            kind="tcp",
            path="",
            scenario="tcp-events",
            concurrency=2,
            duration=None,
            requests=100,
        )
    )
    assert report.statuses == {"OK": 100}


@pytest.mark.asyncio
async def test_mixed_scenario_is_answered_by_the_demo_endpoints(service: ServiceProcess) -> None:
    """info, events and hash (summary needs the downstream stubs, tested in its own area)."""
    mix = (("info", 1), ("events", 1), ("hash", 1))
    report = await drive(
        plan_for(
            service.ports["http"],
            scenario="mixed",
            mix=mix,
            concurrency=3,
            duration=None,
            requests=30,
            seed=1,
        )
    )
    assert report.errors == 0, report.statuses
    assert set(report.statuses) == {"200", "202"}
    assert report.statuses["202"] == pytest.approx(10, abs=7)
