"""Extending the service is adding, not editing: a downstream is a table entry, a stage a line.

(A route is a module plus one line in the wiring: examples/minimal shows it,
with a stage and a TCP line handler, on the runtime alone.)
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from service.app import create_app
from service.domain.enrich import Enriched, EnrichStage, LocalUsers, encode_record
from service.runtime.downstream import Deadline, DownstreamClient
from service.runtime.keys import DOWNSTREAMS, METRICS
from service.runtime.metrics import Metrics
from service.runtime.pipeline import Pipeline, Stage
from service.settings import load_settings
from tests.support.fakes import MemorySink
from tests.support.settings import make_settings
from tests.support.stubs import running_stub


@pytest.mark.asyncio
async def test_a_new_downstream_is_one_table_entry_with_its_own_overrides() -> None:
    async with running_stub("users") as stub:
        settings = make_settings(
            downstream={
                "services": {"payments": {"url": stub.url, "retry_attempts": 1, "bulkhead": 7}}
            }
        )
        app = create_app(settings)
        async with TestClient(TestServer(app)):
            payments = app[DOWNSTREAMS]["payments"]
            assert type(payments) is DownstreamClient  # no class declared: the plain client
            assert payments.retry.attempts == 1
            assert payments.bulkhead.size == 7
            assert payments.settings.deadline_seconds == settings.downstream.deadline_seconds
            assert set(app[DOWNSTREAMS]) == {"users", "orders", "payments"}  # the demo's stay
            user = await payments.get_json("/users/u1", Deadline.after(2))
            assert user["id"] == "u1"
            metrics = app[METRICS]
            assert metrics.downstream_requests.labels("payments", "ok").value == 1


def test_a_downstream_set_by_environment_variables_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SERVICE_DOWNSTREAM__SERVICES__PAYMENTS__URL", "http://pay:9000")
    monkeypatch.setenv("SERVICE_DOWNSTREAM__SERVICES__PAYMENTS__DEADLINE_SECONDS", "0.5")
    monkeypatch.setenv("SERVICE_DOWNSTREAM__USERS_URL", "http://users:8091")  # the short form
    downstream = load_settings().downstream
    assert downstream.service("payments").url == "http://pay:9000"
    assert downstream.service("payments").deadline_seconds == 0.5
    assert downstream.service("users").url == "http://users:8091"
    assert downstream.service("orders").url == "http://127.0.0.1:8092"


class Stamp(Stage):
    """A second stage: one class, and one entry in the wiring's stage list."""

    name = "stamp"

    async def process(self, values: list[Enriched]) -> list[Enriched]:
        return [({**event, "stamped": True}, user, outcome) for event, user, outcome in values]


@pytest.mark.asyncio
async def test_a_new_pipeline_stage_is_one_more_entry_in_the_list() -> None:
    metrics, sink = Metrics(), MemorySink()
    settings = make_settings(pipeline={"stages": {"stamp": {"workers": 2, "capacity": 50}}})
    stages = [EnrichStage(LocalUsers(), metrics), Stamp()]
    async with Pipeline(settings.pipeline, metrics, stages, sink, encode_record) as p:
        ids = p.offer_batch_nowait([{"user_id": f"u{i}", "type": "t"} for i in range(100)])
        await p.drain(5)
    records: list[dict[str, Any]] = [json.loads(data) for _, data in sink.lines]
    assert [r["id"] for r in records] == ids
    assert all(r["stamped"] and r["enrichment"] == "ok" for r in records)
    assert metrics.queue_capacity.labels("stamp").value == 50
    assert {lbl for (lbl,) in metrics.queue_depth._functions} == {"ingest", "enrich", "stamp"}
