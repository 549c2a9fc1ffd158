"""Three service processes on one Redis stream: exactly once, through SIGTERM and an outage.

Clients drive every process over HTTP (batches, ``POST /v1/events``) and TCP
(JSON lines, ``OK <id>``) and keep every id they were given; after SIGTERM
to all three, each acknowledged id must be in the stream exactly once. The
outage test stops Redis for 5 s mid-run and starts it again on the same port
and data directory (append-only file): clients must see 429 / a TCP stall,
intake must stay bounded (memory too), ``/readyz`` must go 503 and back to
200, and nothing acknowledged may be lost or doubled.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import psutil
import pytest

from service.runtime.pipeline import WORKER_BATCH
from tests.support.clients import (
    EventClient,
    TcpEventClient,
    acked,
    start_clients,
    wait_acked,
)
from tests.support.process import ServiceProcess, http_get, running_service, scrape
from tests.support.redis import RedisServer, stream_entries

pytestmark = pytest.mark.slow

STREAM = "events-e2e"
CAPACITY = 1000  # per queue: small, so an outage fills the pipeline in well under a second
ENRICH_WORKERS = 2
BATCH = 256


def redis_env(server: RedisServer) -> dict[str, str]:
    return {
        "SERVICE_PIPELINE__SINK": "redis",
        "SERVICE_PIPELINE__REDIS_URL": server.url,
        "SERVICE_PIPELINE__REDIS_STREAM": STREAM,
        "SERVICE_PIPELINE__INGEST_CAPACITY": str(CAPACITY),
        "SERVICE_PIPELINE__ENRICH_CAPACITY": str(CAPACITY),
        "SERVICE_PIPELINE__ENRICH_WORKERS": str(ENRICH_WORKERS),
        "SERVICE_PIPELINE__BATCH_SIZE": str(BATCH),
        "SERVICE_LOG__ACCESS_LOG": "false",
        "SERVICE_SHUTDOWN__GRACE_SECONDS": "5",
        "SERVICE_SHUTDOWN__DRAIN_SECONDS": "15",
    }


@contextmanager
def three_services(server: RedisServer) -> Iterator[list[ServiceProcess]]:
    with ExitStack() as stack:
        yield [stack.enter_context(running_service(env=redis_env(server))) for _ in range(3)]


def stop_all(
    procs: list[ServiceProcess], clients: list[EventClient], stop: threading.Event
) -> list[int]:
    for proc in procs:
        proc.signal(signal.SIGTERM)
    codes = [proc.wait(40) for proc in procs]
    stop.set()
    for client in clients:
        client.join(10)
    assert [c.error for c in clients if c.error] == []
    return codes


def check_exactly_once(
    server: RedisServer, procs: list[ServiceProcess], clients: list[EventClient]
) -> list[str]:
    given = acked(clients)
    assert len(set(given)) == len(given)
    ids = [i for i, _ in stream_entries(server, STREAM)]
    assert len(set(ids)) == len(ids), f"{len(ids) - len(set(ids))} events written twice"
    missing = set(given) - set(ids)
    assert not missing, f"{len(missing)} acknowledged events are not in the stream"
    unknown = set(ids) - set(given)  # taken, but the answer was cut by the shutdown
    assert len(unknown) <= sum(c.unanswered for c in clients)
    summaries = [proc.events("shutdown complete")[0] for proc in procs]
    assert [s["dropped"] for s in summaries] == [0, 0, 0]
    assert sum(s["delivered"] for s in summaries) == len(ids)
    return ids


def test_three_services_one_stream_every_ack_exactly_once(tmp_path: Path) -> None:
    stop = threading.Event()
    with RedisServer(tmp_path / "redis") as server, three_services(server) as procs:
        clients = start_clients(  # long timeouts, slow retries: an outage lasts 5 s
            [p.ports for p in procs], stop, timeout=30, backoff=0.05
        )
        wait_acked(clients, 6000, timeout=30)
        codes = stop_all(procs, clients, stop)
        assert codes == [0, 0, 0], procs[0].output()[-3000:]
        ids = check_exactly_once(server, procs, clients)
    assert all(c.acked for c in clients), "every HTTP and TCP client got acknowledgements"
    print(f"\n3 services: {len(acked(clients))} acknowledged, {len(ids)} in the stream")


def test_two_workers_one_stream_every_ack_exactly_once(tmp_path: Path) -> None:
    """``serve --workers 2``: each worker is a writer of its own on the shared stream."""
    stop = threading.Event()
    with (
        RedisServer(tmp_path / "redis") as server,
        running_service(["serve", "--workers", "2"], env=redis_env(server)) as proc,
    ):
        clients = start_clients([proc.ports], stop, http=3, tcp=3, timeout=30, backoff=0.05)
        wait_acked(clients, 4000, timeout=30)
        [code] = stop_all([proc], clients, stop)
        assert code == 0, proc.output()[-3000:]
        given = acked(clients)
        ids = [i for i, _ in stream_entries(server, STREAM)]
    assert len(set(ids)) == len(ids), f"{len(ids) - len(set(ids))} events written twice"
    assert not set(given) - set(ids), "an acknowledged event is not in the stream"
    assert len(set(ids) - set(given)) <= sum(c.unanswered for c in clients)
    summaries = [x for x in proc.events("shutdown complete") if "worker" in x]
    assert sorted(x["worker"] for x in summaries) == [1, 2]
    assert [x["dropped"] for x in summaries] == [0, 0]
    assert sum(x["delivered"] for x in summaries) == len(ids)
    print(f"\n2 workers: {len(given)} acknowledged, {len(ids)} in the stream")


class Watcher(threading.Thread):
    """Polls /readyz of each service and samples their RSS until stopped."""

    def __init__(self, procs: list[ServiceProcess]) -> None:
        super().__init__(daemon=True)
        self.procs = procs
        self.stop_event = threading.Event()
        self.statuses: list[list[int]] = [[] for _ in procs]
        self.rss: list[list[int]] = [[] for _ in procs]
        self._ps = [psutil.Process(p.proc.pid) for p in procs if p.proc is not None]

    def run(self) -> None:
        while not self.stop_event.wait(0.1):
            for i, proc in enumerate(self.procs):
                status, _, _ = http_get(proc.url("/readyz"), timeout=5)
                self.statuses[i].append(status)
                self.rss[i].append(self._ps[i].memory_info().rss)

    def mark(self) -> list[int]:
        return [len(s) for s in self.statuses]


def test_redis_outage_backpressure_readiness_and_no_loss(tmp_path: Path) -> None:
    stop = threading.Event()
    server = RedisServer(tmp_path / "redis").start()
    try:
        with three_services(server) as procs:
            clients = start_clients(  # long timeouts, slow retries: an outage lasts 5 s
                [p.ports for p in procs], stop, timeout=30, backoff=0.05
            )
            watcher = Watcher(procs)
            watcher.start()
            wait_acked(clients, 3000, timeout=30)
            time.sleep(0.3)
            rss_before = [max(r) for r in watcher.rss]
            server.stop()
            at_stop = len(acked(clients))  # once Redis is down: it answered until then
            outage_began = watcher.mark()
            time.sleep(5)
            during = len(acked(clients)) - at_stop
            overloaded_during = sum(c.overloaded for c in clients)
            rss_during = [max(r[i:]) for r, i in zip(watcher.rss, outage_began, strict=True)]
            server.start()  # same port, same data directory, append-only file
            back = watcher.mark()
            wait_acked(clients, len(acked(clients)) + 3000, timeout=30)
            deadline = time.monotonic() + 10
            while not all(s[-1:] == [200] for s in watcher.statuses):
                assert time.monotonic() < deadline, "readiness did not come back"
                time.sleep(0.05)
            watcher.stop_event.set()
            watcher.join(10)
            for proc in procs:  # the outage shows in the sink metrics
                samples = scrape(proc.url("/metrics", "admin"))
                assert samples['service_sink_write_failures_total{backend="redis"}'] > 0
                assert samples['service_sink_batch_size_count{backend="redis"}'] > 0
                assert samples['service_sink_write_duration_seconds_count{backend="redis"}'] > 0
            codes = stop_all(procs, clients, stop)
            assert codes == [0, 0, 0], procs[0].output()[-3000:]
            ids = check_exactly_once(server, procs, clients)
    finally:
        server.stop()

    # Intake was bounded while Redis was down: per process, the two queues,
    # the batch being retried, one written as Redis stopped (its room freed)
    # and what the enrich workers hold. Unbounded, it would be 5 s of traffic.
    bound = 3 * (2 * CAPACITY + 2 * BATCH + ENRICH_WORKERS * WORKER_BATCH)
    assert during <= bound, f"{during} events acknowledged during the outage"
    assert overloaded_during > 0, "no client was refused (429 / ERR overloaded)"
    assert max(c.max_wait for c in clients if isinstance(c, TcpEventClient)) > 1.0, (
        "TCP clients never stalled"
    )
    for before, peak in zip(rss_before, rss_during, strict=True):
        assert peak < before + 64 * 2**20, f"RSS grew from {before} to {peak}"
    for statuses, i, j in zip(watcher.statuses, outage_began, back, strict=True):
        assert 503 in statuses[i:j], "/readyz stayed 200 while Redis was down"
        assert statuses[-1] == 200
    print(
        f"\noutage: {during} acknowledged while Redis was down (bound {bound}), "
        f"{overloaded_during} refusals, max TCP stall "
        f"{max(c.max_wait for c in clients if isinstance(c, TcpEventClient)):.1f}s, "
        f"RSS +{max(p - b for b, p in zip(rss_before, rss_during, strict=True)) / 2**20:.1f} MiB;"
        f" {len(ids)} events in the stream, each once"
    )
