"""Shutdown of a real service process: signals, draining, readiness, bounded time, exit code.

These run ``python -m tests.apps.slow_service`` (the service plus slow routes)
or ``python -m service serve`` and send real signals.
"""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Any

import aiohttp
import pytest

from tests.support.process import ServiceProcess, running_service

SLOW_APP = "tests.apps.slow_service"


def _exit_within(svc: ServiceProcess, sig: int = signal.SIGTERM) -> tuple[int, float]:
    start = time.monotonic()
    svc.signal(sig)
    code = svc.wait(30)
    return code, time.monotonic() - start


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_sigterm_when_idle_exits_0_within_1s(loop: str) -> None:
    with running_service(env={"SERVICE_LOOP__KIND": loop}) as svc:
        code, took = _exit_within(svc)
    assert code == 0, svc.output()
    assert took < 1.0, took
    (summary,) = svc.events("shutdown complete")
    assert summary["exit_code"] == 0
    assert summary["level"] == "info"
    assert "tasks_cancelled" in summary
    assert [e["event"] for e in svc.lines if e["event"].startswith("shutdown step")] == [
        "shutdown step 1: not ready",
        "shutdown step 2: listeners closed",
        "shutdown step 3: in-flight work finished",
        "shutdown step 4: drained",
    ]


def test_sigint_is_the_same_as_sigterm() -> None:
    with running_service() as svc:
        code, took = _exit_within(svc, signal.SIGINT)
    assert code == 0
    assert took < 1.0


async def _raw_get(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str
) -> tuple[int, dict[str, str]]:
    writer.write(f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
    head = (await reader.readuntil(b"\r\n\r\n")).decode()
    lines = head.split("\r\n")
    headers = {
        k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)
    }
    await reader.readexactly(int(headers.get("content-length", "0")))
    return int(lines[0].split()[1]), headers


async def _drain_under_load(svc: ServiceProcess, n: int, seconds: float) -> dict[str, Any]:
    port = svc.ports["http"]
    base = f"http://127.0.0.1:{port}"
    # Keep-alive connections opened before the signal: the only way in once the
    # listener is closed, so they show what /readyz says during the drain.
    probes = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
    for reader, writer in probes:
        assert (await _raw_get(reader, writer, "/readyz"))[0] == 200

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def slow() -> tuple[int, str | None]:
            async with session.get(f"{base}/test/slow?seconds={seconds}") as resp:
                await resp.read()
                return resp.status, resp.headers.get("Connection")

        requests = [asyncio.create_task(slow()) for _ in range(n)]
        await asyncio.sleep(min(0.5, seconds / 2))  # all of them are in flight now
        assert all(not r.done() for r in requests)
        signalled = time.monotonic()
        svc.signal(signal.SIGTERM)
        await asyncio.sleep(0.2)
        ready_during = []
        for reader, writer in probes:
            status, headers = await _raw_get(reader, writer, "/readyz")
            ready_during.append((status, headers.get("connection")))
            writer.close()
        results = await asyncio.gather(*requests, return_exceptions=True)
    code = await asyncio.to_thread(svc.wait, 30)
    return {
        "results": results,
        "ready_during": ready_during,
        "code": code,
        "took": time.monotonic() - signalled,
    }


@pytest.mark.slow
@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_sigterm_with_200_slow_requests_in_flight(loop: str) -> None:
    grace = 4.0
    env = {
        "SERVICE_SHUTDOWN__GRACE_SECONDS": str(grace),
        "SERVICE_LOOP__KIND": loop,
        "SERVICE_LOG__ACCESS_LOG": "false",
    }
    with running_service(module=SLOW_APP, env=env) as svc:
        out = asyncio.run(_drain_under_load(svc, 200, seconds=1.5))
    assert out["code"] == 0, svc.output()[-3000:]
    answered = [r for r in out["results"] if isinstance(r, tuple)]
    assert len(answered) == 200, [r for r in out["results"] if not isinstance(r, tuple)][:3]
    assert all(status == 200 for status, _ in answered)
    # Sent while draining: every response tells the client to close.
    assert all(conn == "close" for _, conn in answered)
    assert out["ready_during"] == [(503, "close")] * 3
    assert out["took"] < grace + 1.0, out["took"]
    (summary,) = svc.events("shutdown complete")
    assert summary["exit_code"] == 0


@pytest.mark.slow
def test_requests_longer_than_the_grace_period_are_cut_and_exit_is_bounded() -> None:
    grace, cancel = 1.0, 0.5
    env = {
        "SERVICE_SHUTDOWN__GRACE_SECONDS": str(grace),
        "SERVICE_SHUTDOWN__CANCEL_SECONDS": str(cancel),
    }
    with running_service(module=SLOW_APP, env=env) as svc:
        out = asyncio.run(_drain_under_load(svc, 5, seconds=30))
    assert out["code"] == 0
    assert all(isinstance(r, aiohttp.ClientError) for r in out["results"]), out["results"]
    assert out["took"] < grace + 2 * cancel + 1.0, out["took"]
    assert any(e["event"] == "grace period over: closing busy HTTP connections" for e in svc.lines)


@pytest.mark.slow
def test_readiness_delay_keeps_serving_new_connections() -> None:
    delay = 1.0
    with running_service(env={"SERVICE_SHUTDOWN__READINESS_DELAY": str(delay)}) as svc:
        base = svc.url("")

        async def probe() -> list[tuple[float, int, int]]:
            seen = []
            start = time.monotonic()
            svc.signal(signal.SIGTERM)
            async with aiohttp.ClientSession() as session:
                while time.monotonic() - start < delay * 0.7:
                    await asyncio.sleep(0.1)
                    # A fresh connection each time: the listener must still accept.
                    async with (
                        session.get(f"{base}/readyz", headers={"Connection": "close"}) as ready,
                        session.get(f"{base}/livez", headers={"Connection": "close"}) as live,
                    ):
                        seen.append((time.monotonic() - start, ready.status, live.status))
            return seen

        seen = asyncio.run(probe())
        code = svc.wait(10)
    assert code == 0
    assert len(seen) >= 3
    assert all(ready == 503 and live == 200 for _, ready, live in seen), seen
    (summary,) = svc.events("shutdown complete")
    assert summary["seconds"] >= delay


@pytest.mark.slow
def test_second_signal_exits_at_once() -> None:
    env = {"SERVICE_SHUTDOWN__GRACE_SECONDS": "20"}
    with running_service(module=SLOW_APP, env=env) as svc:

        async def scenario() -> float:
            async with aiohttp.ClientSession() as session:
                request = asyncio.create_task(session.get(svc.url("/test/slow?seconds=30")))
                await asyncio.sleep(0.3)
                svc.signal(signal.SIGTERM)
                await asyncio.sleep(0.3)
                assert svc.proc is not None
                assert svc.proc.poll() is None  # still draining the slow request
                start = time.monotonic()
                svc.signal(signal.SIGTERM)
                await asyncio.to_thread(svc.wait, 10)
                took = time.monotonic() - start
                with pytest.raises(aiohttp.ClientError):
                    await request
            return took

        took = asyncio.run(scenario())
    assert took < 1.0
    assert svc.proc is not None
    assert svc.proc.returncode == 1
    assert svc.events("second signal: exiting at once")


async def _post_loops(port: int, loops: int, stop_after: float, on_start: Any) -> dict[str, Any]:
    """``loops`` keep-alive clients POSTing until the service goes away."""
    url = f"http://127.0.0.1:{port}/test/slow?seconds=0.02"
    ok = refused = 0
    dropped: list[str] = []

    async def client() -> None:
        nonlocal ok, refused
        connector = aiohttp.TCPConnector(limit=1)
        async with aiohttp.ClientSession(connector=connector) as session:
            deadline = time.monotonic() + stop_after
            while time.monotonic() < deadline:
                try:
                    async with session.post(url, data=b"x" * 512) as resp:
                        assert resp.status == 200
                        assert (await resp.json()) == {"received": 512}
                        ok += 1
                except aiohttp.ClientConnectorError:
                    refused += 1  # the listener is closed: the service is going away
                    return
                except aiohttp.ClientError as exc:
                    dropped.append(repr(exc))  # cut mid-request: the bug we look for
                    return

    tasks = [asyncio.create_task(client()) for _ in range(loops)]
    await asyncio.sleep(0.5)
    on_start()
    await asyncio.gather(*tasks)
    return {"ok": ok, "refused": refused, "dropped": dropped}


@pytest.mark.slow
@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_keepalive_post_loops_across_sigterm_see_no_dropped_request(loop: str) -> None:
    env = {"SERVICE_LOOP__KIND": loop, "SERVICE_LOG__ACCESS_LOG": "false"}
    with running_service(module=SLOW_APP, env=env) as svc:
        out = asyncio.run(
            _post_loops(svc.ports["http"], 50, 15.0, lambda: svc.signal(signal.SIGTERM))
        )
        code = svc.wait(15)
    assert out["dropped"] == [], out
    assert out["refused"] == 50
    assert out["ok"] > 50
    assert code == 0
