"""Failing fast stays fast: with the users circuit open a batch skips its lookups at once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from service.domain.enrich import EnrichStage
from service.domain.events import Event
from service.runtime.metrics import Metrics
from tests.support.process import free_port, tcp_events_load
from tests.support.stubs import service_process, stub_process


class OpenCircuitUsers:
    """A lookup whose circuit opens after ``fail_after`` failed calls; u1 stays cached."""

    def __init__(self, fail_after: int) -> None:
        self.fail_after = fail_after
        self.calls = 0
        self.refusing_asked = 0

    async def get_user(self, user_id: str) -> dict[str, Any] | None:
        self.calls += 1
        raise ConnectionError("users is down")

    def refusing(self) -> bool:
        self.refusing_asked += 1
        return self.calls >= self.fail_after

    def cached(self, user_id: str, default: Any) -> Any:
        return {"id": "u1"} if user_id == "u1" else default


def _events(n: int) -> list[Event]:
    return [{"user_id": f"u{i % 50}", "type": "click"} for i in range(n)]


def _counts(metrics: Metrics) -> dict[str, float]:
    return {
        s.labels["outcome"]: s.value
        for s in metrics.pipeline_events.collect().samples
        if s.labels["stage"] == "enrich" and s.value
    }


@pytest.mark.asyncio
async def test_an_open_circuit_skips_the_batchs_lookups_with_one_check() -> None:
    users, metrics = OpenCircuitUsers(fail_after=0), Metrics()
    events = _events(1000)
    out = await EnrichStage(users, metrics).process(events)
    assert users.calls == 0
    assert users.refusing_asked == 1
    assert [event for event, _, _ in out] == events  # every event, in order
    for event, user, outcome in out:
        if event["user_id"] == "u1":  # a cached user is still enriched
            assert (user, outcome) == ({"id": "u1"}, "ok")
        else:
            assert (user, outcome) == (None, "failed")
    assert _counts(metrics) == {"ok": 20, "failed": 980}


@pytest.mark.asyncio
async def test_a_circuit_that_opens_during_a_batch_stops_its_lookups_there() -> None:
    users, metrics = OpenCircuitUsers(fail_after=3), Metrics()
    out = await EnrichStage(users, metrics).process(_events(1000))
    assert users.calls == 3  # not one call (and one exception) per remaining user
    assert [event for event, _, _ in out] == _events(1000)  # every event, in order
    assert {outcome for _, _, outcome in out[:3]} == {"failed"}


# -- side by side: the service with the users downstream healthy, and down ----------


@pytest.mark.slow
def test_tcp_ingest_with_the_users_downstream_down_keeps_the_healthy_rate(
    tmp_path: Path,
) -> None:
    """32 closed-loop TCP connections: down at least 0.8x healthy, p99 within 2x (best of 3)."""
    env = {"SERVICE_LOG__ACCESS_LOG": "false"}
    with (
        stub_process("users") as users,
        service_process({**env, "SERVICE_DOWNSTREAM__USERS_URL": users.url()}) as healthy,
        service_process(
            {**env, "SERVICE_DOWNSTREAM__USERS_URL": f"http://127.0.0.1:{free_port()}"}
        ) as down,
    ):
        rounds: list[tuple[float, float, float, float]] = []
        for i in range(3):  # a noisy neighbour on a shared machine may spoil a round
            h = tcp_events_load(healthy.ports["tcp"], 3, tmp_path / f"healthy-{i}.json")
            d = tcp_events_load(down.ports["tcp"], 3, tmp_path / f"down-{i}.json")
            rounds.append(
                (
                    h["requests_per_second"],
                    d["requests_per_second"],
                    h["latency_ms"]["p99"],
                    d["latency_ms"]["p99"],
                )
            )
            assert h["errors"] == d["errors"] == 0
            rate_h, rate_d, p99_h, p99_d = rounds[-1]
            if rate_d >= 0.8 * rate_h and p99_d <= 2 * max(p99_h, 1.0):
                break
        warned = down.events("user lookup failed: writing events unenriched")
    print(
        "healthy vs down (events/s, p99 ms): "
        + "; ".join(
            f"{h:,.0f} vs {d:,.0f} ({d / h:.2f}x), {ph:.2f} vs {pd:.2f}" for h, d, ph, pd in rounds
        )
    )
    assert rate_d >= 0.8 * rate_h, rounds
    # A p99 of a millisecond or two moves with the machine: within 2x, or 2 ms.
    assert p99_d <= 2 * max(p99_h, 1.0), rounds
    assert warned, "the degraded service said nothing about its lookups"
