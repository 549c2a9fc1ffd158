"""Security checks of the contract (docs/contract.md), against a real service process.

- ``/metrics`` and ``/debug/*`` exist only on the admin listener, never on the public port;
- the admin listener binds to loopback unless told otherwise;
- a client cannot forge log lines: CR/LF (and other control characters) in a header
  or in the query yield exactly one JSON log line for the request;
- request ids that are too long or hold odd characters are replaced, sane ones kept;
- the dependency floor carries the published aiohttp security fixes (3.13.4+).
"""

from __future__ import annotations

import json
import socket
import time
import tomllib
from collections.abc import Iterator
from importlib.metadata import version

import psutil
import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from service.runtime.requestid import sane_request_id
from service.settings import Settings
from tests.support.process import ROOT, ServiceProcess, http_get, running_service, service_env

AIOHTTP_FLOOR = Version("3.13.4")


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    data = tmp_path_factory.mktemp("security")
    env = {
        "SERVICE_ADMIN__DEBUG": "true",
        "SERVICE_PIPELINE__SINK_PATH": str(data / "ev.jsonl"),
        "SERVICE_LOG__ACCESS_LOG_SAMPLE": "1.0",
    }
    with running_service(env=env) as proc:
        yield proc


@pytest.mark.parametrize(
    "path",
    [
        "/metrics",
        "/debug/tasks",
        "/debug/",
        "/debug/tasks/",
        "/%6Detrics",
        "/./metrics",
        "/v1/../metrics",
    ],
)
def test_admin_routes_do_not_exist_on_the_public_port(svc: ServiceProcess, path: str) -> None:
    status, _, body = _raw_get(svc.ports["http"], path)
    assert status == 404, (path, status)
    assert b"service_http_requests_total" not in body
    assert b"stack" not in body.lower()


def test_admin_routes_exist_on_the_admin_port(svc: ServiceProcess) -> None:
    """The control for the test above: the routes are real, just elsewhere."""
    status, _, body = http_get(svc.url("/metrics", "admin"))
    assert status == 200
    assert b"service_http_requests_total" in body or b"_http_requests_total" in body
    status, _, _ = http_get(svc.url("/debug/tasks", "admin"))
    assert status == 200


def test_admin_binds_to_loopback_by_default(tmp_path_factory: pytest.TempPathFactory) -> None:
    assert Settings().admin.host == "127.0.0.1"
    with (ROOT / "config" / "default.toml").open("rb") as f:
        assert tomllib.load(f)["admin"]["host"] == "127.0.0.1"
    # A real process on the defaults (public listeners on loopback only for the
    # test's sake; admin.host NOT set): its admin socket is on 127.0.0.1.
    env = service_env()
    del env["SERVICE_ADMIN__HOST"]
    data = tmp_path_factory.mktemp("loopback")
    proc = ServiceProcess(["serve"], env={**env, "SERVICE_PIPELINE__SINK_PATH": str(data / "e")})
    proc.start()
    try:
        ports = proc.wait_listening()
        assert proc.proc is not None
        admin = [
            c
            for c in psutil.Process(proc.proc.pid).net_connections(kind="tcp")
            if c.status == psutil.CONN_LISTEN and c.laddr.port == ports["admin"]
        ]
        assert admin, ports
        assert {c.laddr.ip for c in admin} == {"127.0.0.1"}
    finally:
        proc.stop()


INJECTIONS = [
    ("query", "/v1/info?q=%0D%0A%7B%22event%22%3A%22forged%22%7D"),
    ("query", "/v1/info?q=a%0Ab%0Dc%00d%E2%80%A8e"),
    ("path", "/v1/nope%0D%0A%7B%22event%22%3A%22forged%22%7D"),
    ("header", '\x0b\x0c\x85\xe2\x80\xa8{"event":"forged"}'),
    ("header", "tab\there"),
    ("obs-fold", "first\r\n second-line-folded"),
    ("bare-cr", "a\rb"),
    ("bare-lf", "a\nb"),
]


@pytest.mark.parametrize(
    ("where", "value"), INJECTIONS, ids=[f"{w}-{i}" for i, (w, _) in enumerate(INJECTIONS)]
)
def test_control_characters_yield_one_log_line(svc: ServiceProcess, where: str, value: str) -> None:
    """Whatever the client puts in a header or the query, one request = one JSON line."""
    marker = f"sec-{time.monotonic_ns()}"
    path = value if where in ("query", "path") else "/v1/info"
    extra = b""
    if where != "query" and where != "path":
        # Raw bytes on the wire, as an attacker would send them (latin-1 keeps bytes).
        extra = b"User-Agent: " + value.encode("latin-1", "replace") + b"\r\n"
    before = len(svc.raw)
    status, _, _ = _raw_get(svc.ports["http"], path, extra + f"X-Request-ID: {marker}\r\n".encode())
    assert status != 500

    # The line is flushed by the buffered sink: wait for it.
    def relevant(lines: list[bytes]) -> list[bytes]:
        # The access line carries the marker; a request the HTTP parser refuses
        # never reaches the middleware and is logged once by the server instead.
        return [
            line
            for line in lines
            if marker.encode() in line
            or b"refused by the HTTP parser" in line
            or b"Error handling request" in line
        ]

    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not relevant(svc.raw[before:]):
        time.sleep(0.05)
    time.sleep(0.2)  # a second line, if there were one, would be flushed by now
    new = svc.raw[before:]
    for line in new:
        assert line.endswith(b"\n")
        doc = json.loads(line)  # every line is one whole JSON document
        assert doc.get("event") != "forged"
    assert len(relevant(new)) == 1, (status, new)
    if status == 400:
        assert where in ("header", "obs-fold", "bare-cr", "bare-lf"), new


BAD_IDS = [
    "x" * 129,
    "has space",
    'quote"',
    "brace{",
    "semi;colon",
    "ünïcode",
    "a/b",
    "percent%0a",
    "",
    "<script>",
]


@pytest.mark.parametrize("rid", BAD_IDS)
def test_odd_or_long_request_ids_are_replaced(svc: ServiceProcess, rid: str) -> None:
    status, headers, _ = _raw_get(
        svc.ports["http"], "/v1/info", b"X-Request-ID: " + rid.encode() + b"\r\n"
    )
    assert status == 200
    assert headers["x-request-id"] != rid
    assert sane_request_id(headers["x-request-id"])


@pytest.mark.parametrize("rid", ["abc", "a" * 128, "0f1e-2d3c.4b:5a_6"])
def test_sane_request_ids_are_kept(svc: ServiceProcess, rid: str) -> None:
    status, headers, _ = _raw_get(
        svc.ports["http"], "/v1/info", f"X-Request-ID: {rid}\r\n".encode()
    )
    assert status == 200
    assert headers["x-request-id"] == rid


def test_aiohttp_floor_carries_the_security_fixes() -> None:
    with (ROOT / "pyproject.toml").open("rb") as f:
        deps = tomllib.load(f)["project"]["dependencies"]
    reqs = [Requirement(d) for d in deps if Requirement(d).name == "aiohttp"]
    assert len(reqs) == 1, deps
    spec = reqs[0].specifier
    assert AIOHTTP_FLOOR in spec
    for older in ("3.13.3", "3.12.15", "3.9.0"):
        assert Version(older) not in spec, f"aiohttp {older} is allowed by {spec}"
    assert Version(version("aiohttp")) >= AIOHTTP_FLOOR  # and the installed one is new enough


def _raw_get(
    port: int, path: str, extra_headers: bytes = b"", timeout: float = 5.0
) -> tuple[int, dict[str, str], bytes]:
    """A GET written byte by byte (no client library cleaning the request up)."""
    request = (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n".encode()
        + extra_headers
        + b"\r\n"
    )
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body
