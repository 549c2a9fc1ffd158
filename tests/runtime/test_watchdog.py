"""The stalled-loop watchdog and the admin listener's own thread, on a real service process."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from tests.support.process import http_get, running_service, scrape

FAULTS = "tests.apps.fault_service"
BLOCKING_LINE = "time.sleep(seconds)  # blocks the loop on purpose"


def _line_of(path: Path, code: str) -> int:
    return next(n for n, text in enumerate(path.read_text().splitlines(), 1) if code in text)


def _wait_for(proc: Any, event: str, timeout: float = 5.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while not (found := proc.events(event)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return found


def test_a_blocked_loop_is_reported_while_it_is_blocked() -> None:
    with running_service(module=FAULTS) as svc:
        metrics_url = svc.url("/metrics", "admin")
        idle = scrape(metrics_url)
        blocker = threading.Thread(
            target=http_get, args=(svc.url("/test/block?seconds=3"),), kwargs={"timeout": 10}
        )
        blocker.start()
        time.sleep(1.6)  # past loop.stall_seconds (1 s) and a watchdog tick
        began = time.monotonic()
        during = scrape(metrics_url)
        scrape_seconds = time.monotonic() - began
        # /livez stays on the loop: it cannot answer while the loop is blocked.
        began = time.monotonic()
        try:
            livez: Any = http_get(svc.url("/livez"), timeout=0.5)[0]
        except OSError as exc:
            livez = exc
        livez_seconds = time.monotonic() - began
        blocker.join(10)
        stalled = _wait_for(
            svc, "event loop stalled: it has run nothing for longer than loop.stall_seconds"
        )
        ended = _wait_for(svc, "event loop runs again after a stall")
        after = scrape(metrics_url)
    print(f"scrape during the block: {scrape_seconds * 1000:.1f} ms")
    # The admin listener has its own thread: it answers at once, and shows the stall.
    assert scrape_seconds < 0.2, scrape_seconds
    assert during["service_event_loop_stalls_total"] == 1
    assert 1.0 <= during["service_event_loop_stall_seconds"] < 3.0
    # The task holding the loop is the blocking request's (aiohttp's "http" task).
    assert during['service_asyncio_tasks{group="http",state="running"}'] == 1
    assert not isinstance(livez, int), livez
    assert livez_seconds >= 0.45
    # Before and after: no stall, nothing running (the scrape is not a task of the loop).
    for samples in (idle, after):
        assert samples["service_event_loop_stall_seconds"] == 0
        assert sum(v for k, v in samples.items() if 'state="running"' in k) == 0
    assert idle["service_event_loop_stalls_total"] == 0
    assert after["service_event_loop_stalls_total"] == 1
    # One line for the stall, naming the blocking call, its file and line.
    [line] = stalled
    app = Path(__file__).resolve().parents[1] / "apps" / "fault_service.py"
    assert line["blocking"] == f"{app}:{_line_of(app, BLOCKING_LINE)} in block"
    assert line["code"] == BLOCKING_LINE
    assert line["stack"][-1] == line["blocking"]
    assert line["level"] == "warning"
    assert 1.0 <= line["seconds"] < 2.0
    [end] = ended
    assert 2.5 <= end["seconds"] < 4.0
