"""``service serve --workers N`` as a real process: shared ports, one /metrics, restarts, stops."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from service.runtime.workers.count import usable_cpus
from tests.support.clients import TcpEventClient, acked, start_clients, wait_acked
from tests.support.process import (
    ServiceProcess,
    free_port,
    http_get,
    parse_metrics,
    require_tool,
    running_service,
    service_env,
)

pytestmark = pytest.mark.slow

TWO = ["serve", "--workers", "2"]


def workers(svc: ServiceProcess) -> list[dict[str, Any]]:
    status, _, body = http_get(svc.url("/workers", "admin"))
    assert status == 200, body
    result: list[dict[str, Any]] = json.loads(body)
    return result


def wait_workers_ready(
    svc: ServiceProcess, count: int, timeout: float = 15.0
) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        ws = workers(svc)
        if len(ws) == count and all(w["state"] == "ready" and w["ready"] for w in ws):
            return ws
        assert time.monotonic() < deadline, ws
        time.sleep(0.05)


def gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")


def ping(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"PING\n")
        return s.recv(100)


def test_two_workers_share_the_ports_and_one_metrics_page() -> None:
    promtool = require_tool("promtool")
    with running_service(TWO) as svc:
        ws = wait_workers_ready(svc, 2)
        pids = {w["pid"] for w in ws}
        assert len(pids) == 2
        assert svc.proc is not None
        assert svc.proc.pid not in pids
        # New connections land on both workers (the kernel hashes them over
        # the two sockets of each port): 40 connections all on one has odds 2**-39.
        for _ in range(40):
            assert http_get(svc.url("/v1/info"))[0] == 200
            assert ping(svc.ports["tcp"]) == b"PONG\n"
        status, headers, body = http_get(svc.url("/metrics", "admin"))
        assert status == 200
        assert headers["Content-Type"].startswith("text/plain; version=")
        check = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True)
        assert check.returncode == 0, check.stdout + check.stderr
        samples = parse_metrics(body.decode())
        info = 'service_http_requests_total{method="GET",route="/v1/info",status="200",worker="%s"}'
        tcp = 'service_tcp_connections_total{result="accepted",worker="%s"}'
        assert samples.get(info % "1", 0) + samples.get(info % "2", 0) == 40
        assert samples.get(tcp % "1", 0) > 0
        assert samples.get(tcp % "2", 0) > 0
        assert samples['service_ready{worker="1"}'] == samples['service_ready{worker="2"}'] == 1
        assert samples["service_workers_alive"] == samples["service_workers_desired"] == 2
        assert samples['service_worker_up{worker="2"}'] == 1
        # Each worker's own admin port: its health, for a human or a probe.
        for w in ws:
            assert http_get(f"http://127.0.0.1:{w['admin_port']}/readyz")[0] == 200
            assert http_get(f"http://127.0.0.1:{w['admin_port']}/livez")[0] == 200
        # Prometheus asking for OpenMetrics (exemplars) gets it, workers' series included.
        accept = {"Accept": "application/openmetrics-text; version=1.0.0"}
        status, headers, body = http_get(svc.url("/metrics", "admin"), headers=accept)
        assert headers["Content-Type"].startswith("application/openmetrics-text")
        assert body.endswith(b"# EOF\n")
        assert b'service_ready{worker="2"} 1.0' in body
        # The workers' lines carry their number; only the supervisor says "listening".
        assert sorted(line["worker"] for line in svc.events("worker listening")) == [1, 2]
        assert [line.get("worker") for line in svc.events("listening")] == [None]
        assert svc.stop() == 0
    [summary] = [x for x in svc.events("shutdown complete") if "worker" not in x]
    assert summary["workers"] == {"1": 0, "2": 0}


def test_workers_0_starts_one_per_usable_cpu() -> None:
    cpus = usable_cpus()
    if cpus < 2:
        pytest.skip("one usable CPU: --workers 0 runs a single process")
    with running_service(["serve", "--workers", "0"]) as svc:
        ws = wait_workers_ready(svc, cpus)
        assert len({w["pid"] for w in ws}) == cpus
        assert svc.stop() == 0
    print(f"\n--workers 0 started {cpus} workers")


class InfoClient(threading.Thread):
    """GET /v1/info in a loop on a keep-alive connection; counts answers and failures."""

    def __init__(self, port: int, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.port, self.stop_event = port, stop
        self.answered = self.failed = 0

    def run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            while not self.stop_event.is_set():
                try:
                    conn.request("GET", "/v1/info")
                    resp = conn.getresponse()
                    resp.read()
                    ok = resp.status == 200
                except (OSError, http.client.HTTPException):
                    ok = False
                    conn.close()  # the next request connects again
                if ok:
                    self.answered += 1
                else:
                    self.failed += 1
        finally:
            conn.close()


def test_a_killed_worker_is_replaced_at_once_and_requests_keep_being_answered() -> None:
    with running_service(TWO, env={"SERVICE_LOG__ACCESS_LOG": "false"}) as svc:
        victim = wait_workers_ready(svc, 2)[0]
        stop = threading.Event()
        clients = [InfoClient(svc.ports["http"], stop) for _ in range(8)]
        for client in clients:
            client.start()
        time.sleep(1.0)
        before = sum(c.answered for c in clients), sum(c.failed for c in clients)
        killed = time.monotonic()
        os.kill(victim["pid"], signal.SIGKILL)
        while True:
            first = workers(svc)[0]
            if first["state"] == "ready" and first["pid"] != victim["pid"]:
                back = time.monotonic() - killed
                break
            assert time.monotonic() - killed < 10, first
            time.sleep(0.02)
        time.sleep(1.0)  # and a while after
        stop.set()
        for client in clients:
            client.join(10)
        answered = sum(c.answered for c in clients) - before[0]
        failed = sum(c.failed for c in clients) - before[1]
        ws = workers(svc)
        assert svc.stop() == 0
    print(f"\nkill -9: back after {back:.2f}s; {answered} answered, {failed} failed meanwhile")
    assert back < 2.0
    assert answered / (answered + failed) >= 0.95
    assert ws[0]["restarts"] == 1
    assert ws[1]["restarts"] == 0
    exits = svc.events("worker exited")
    assert [(x["worker"], x["exit_code"]) for x in exits] == [(1, -signal.SIGKILL)]


def _sink_ids(path: Path) -> list[str]:
    data = path.read_bytes()
    assert not data or data.endswith(b"\n"), "torn last line"
    return [json.loads(line)["id"] for line in data.splitlines()]


def test_sigterm_under_http_and_tcp_event_load_loses_nothing(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    env = {
        "SERVICE_PIPELINE__SINK_PATH": str(path),
        "SERVICE_LOG__ACCESS_LOG": "false",
        "SERVICE_SHUTDOWN__GRACE_SECONDS": "5",
        "SERVICE_SHUTDOWN__DRAIN_SECONDS": "10",
    }
    stop = threading.Event()
    with running_service(TWO, env=env) as svc:
        clients = start_clients([svc.ports], stop, http=4, tcp=4)
        wait_acked(clients, 4000)
        svc.signal(signal.SIGTERM)
        code = svc.wait(40)
        stop.set()
        for client in clients:
            client.join(10)
    assert [c.error for c in clients if c.error] == []
    assert code == 0, svc.output()[-3000:]
    # One file per worker, next to the configured one, which nobody writes.
    files = [tmp_path / "events.w1.jsonl", tmp_path / "events.w2.jsonl"]
    assert sorted(tmp_path.iterdir()) == files
    ids = [i for f in files for i in _sink_ids(f)]
    assert len(set(ids)) == len(ids), "an event was written twice"
    given = acked(clients)
    missing = set(given) - set(ids)
    assert not missing, f"{len(missing)} acknowledged events are not in the sink files"
    assert len(set(ids) - set(given)) <= sum(c.unanswered for c in clients)
    assert any(isinstance(c, TcpEventClient) and c.acked for c in clients)
    summaries = [x for x in svc.events("shutdown complete") if "worker" in x]
    assert sorted(x["worker"] for x in summaries) == [1, 2]
    assert all(x["dropped"] == 0 and x["exit_code"] == 0 for x in summaries)
    assert sum(x["delivered"] for x in summaries) == len(ids)
    print(f"\nSIGTERM, 2 workers: {len(given)} acknowledged, {len(ids)} in the sink files")


def test_a_worker_that_crashes_at_start_makes_the_supervisor_exit_1_quickly() -> None:
    env = {**service_env(), "SERVICE_WORKERS__COUNT": "2"}
    svc = ServiceProcess([], env=env, module="tests.apps.crash_at_start").start()
    began = time.monotonic()
    code = svc.wait(60)
    took = time.monotonic() - began
    print(f"\ncrash at start-up: the supervisor exited {code} after {took:.1f}s")
    assert code == 1, svc.output()[-3000:]
    errors = [
        x for x in svc.lines if x.get("logger") == "service.supervisor" and x["level"] == "error"
    ]
    assert len(errors) == 1, errors
    assert errors[0]["event"].startswith("crash loop: worker ")
    assert took < 10


def test_a_worker_with_bad_config_makes_the_supervisor_exit_2(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    env = {**service_env(), "SERVICE_PIPELINE__SINK_PATH": str(tmp_path / "file" / "events.jsonl")}
    svc = ServiceProcess(TWO, env=env).start()
    assert svc.wait(30) == 2, svc.output()[-3000:]
    assert not svc.events("worker exited") or all(
        x["exit_code"] == 2 for x in svc.events("worker exited")
    )


def test_a_port_in_use_is_exit_2_as_with_one_process() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        svc = ServiceProcess(TWO, env={**service_env(), "SERVICE_TCP__PORT": str(port)}).start()
        assert svc.wait(30) == 2
    [error] = [x for x in svc.lines if x["level"] == "error"]
    assert error["event"] == "cannot start"
    assert str(port) in error["error"]


def _slow_request(svc: ServiceProcess) -> None:
    # Cut by the second signal: expected.
    with contextlib.suppress(OSError, http.client.HTTPException):
        http_get(svc.url("/test/slow?seconds=20"), 30)


def test_a_second_signal_exits_at_once() -> None:
    env = {**service_env(), "SERVICE_WORKERS__COUNT": "2", "SERVICE_SHUTDOWN__GRACE_SECONDS": "30"}
    svc = ServiceProcess([], env=env, module="tests.apps.slow_service").start()
    try:
        svc.wait_listening()
        pids = [w["pid"] for w in wait_workers_ready(svc, 2)]
        slow = [threading.Thread(target=_slow_request, args=(svc,), daemon=True) for _ in range(8)]
        for t in slow:
            t.start()
        time.sleep(0.5)
        svc.signal(signal.SIGTERM)
        time.sleep(0.5)
        assert svc.proc is not None
        assert svc.proc.poll() is None
        began = time.monotonic()
        svc.signal(signal.SIGINT)
        assert svc.wait(5) == 1
        assert time.monotonic() - began < 1.0
        # Its log line is written before it goes (the writer thread is given the time).
        [line] = svc.events("second signal: exiting at once")
        assert line["signal"] == "SIGINT"
        deadline = time.monotonic() + 3
        while not all(gone(pid) for pid in pids):
            assert time.monotonic() < deadline, "a worker lives on"
            time.sleep(0.02)
    finally:
        if svc.proc is not None and svc.proc.poll() is None:
            svc.proc.kill()
            svc.wait(10)


def test_workers_stop_when_the_supervisor_is_killed() -> None:
    with running_service(TWO) as svc:
        pids = [w["pid"] for w in wait_workers_ready(svc, 2)]
        assert svc.proc is not None
        svc.proc.kill()
        svc.wait(10)
        deadline = time.monotonic() + 10
        while not all(gone(pid) for pid in pids):
            assert time.monotonic() < deadline, "a worker lives on without its supervisor"
            time.sleep(0.05)


def test_sigterm_to_every_process_at_once_is_one_graceful_stop() -> None:
    """As systemd stops a unit (the whole cgroup): the workers get SIGTERM and the stop word."""
    with running_service(TWO) as svc:
        pids = [w["pid"] for w in wait_workers_ready(svc, 2)]
        assert svc.proc is not None
        for pid in [svc.proc.pid, *pids]:
            os.kill(pid, signal.SIGTERM)
        assert svc.wait(30) == 0, svc.output()[-3000:]
    assert not svc.events("second signal: exiting at once")
    workers_done = [x for x in svc.events("shutdown complete") if "worker" in x]
    assert sorted(x["worker"] for x in workers_done) == [1, 2]


def test_a_port_the_workers_do_not_listen_on_is_let_go() -> None:
    tcp_port = free_port()
    env = {"SERVICE_WORKERS__COUNT": "2", "SERVICE_TCP__PORT": str(tcp_port)}
    with running_service(env=env, module="tests.apps.http_only") as svc:
        assert set(svc.ports) == {"http", "admin"}
        wait_workers_ready(svc, 2)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", tcp_port), timeout=5).close()
        assert http_get(svc.url("/v1/info"))[0] == 200
        assert svc.stop() == 0
