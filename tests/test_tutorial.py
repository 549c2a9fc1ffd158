"""docs/tutorial.md, performed: every block applied in order to a fresh copy, then the result run.

The tutorial's blocks are the steps: ``sh`` blocks that run ``make rename``
are run (with this test's venv), ``diff`` blocks are applied with ``git
apply``, and blocks with a ``file=PATH`` info string are written to that
path. Then the copy must lint, format, type-check and keep its import
contracts, its settings and OpenAPI tests must pass, and the service it has
become must serve the new route through the new downstream, run events
through the new stage and export the new metric.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.process import ROOT, ServiceProcess, scrape

pytestmark = pytest.mark.slow

TUTORIAL = ROOT / "docs" / "tutorial.md"
BLOCK = re.compile(r"^```(\w+)([^\n]*)\n(.*?)^```$", re.S | re.M)
BIN = Path(sys.executable).parent
VENV = BIN.parent


def _steps() -> list[tuple[str, str, str]]:
    return [(lang, info.strip(), body) for lang, info, body in BLOCK.findall(TUTORIAL.read_text())]


def _run(args: list[str | Path], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, cwd=cwd, capture_output=True, text=True, env={**os.environ, **env}, check=False
    )


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A copy of the repository with every step of the tutorial applied; (root, package)."""
    root = tmp_path_factory.mktemp("tutorial") / "tree"
    tracked = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, check=True, capture_output=True
    ).stdout.decode()
    for rel in filter(None, tracked.split("\0")):
        if (ROOT / rel).is_file():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, root / rel)
    package = ""
    applied = 0
    for lang, info, body in _steps():
        if lang == "sh" and body.startswith("make rename"):
            package = re.search(r"NAME=(\w+)", body).group(1)  # type: ignore[union-attr]
            done = _run(["make", "rename", f"NAME={package}", f"VENV={VENV}"], root)
        elif lang == "diff":
            done = subprocess.run(
                ["git", "apply", "-"], cwd=root, input=body, capture_output=True, text=True
            )
        elif info.startswith("file="):
            path = root / info.removeprefix("file=")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(body)
            continue
        else:
            continue  # prose examples
        assert done.returncode == 0, f"step {applied + 1} failed:\n{body[:400]}\n{done.stderr}"
        applied += 1
    assert package, "the tutorial renames nothing"
    assert applied >= 6
    return root, package


def test_the_steps_apply_and_the_result_lints_type_checks_and_keeps_its_contracts(
    tree: tuple[Path, str],
) -> None:
    root, _ = tree
    path = {"PYTHONPATH": str(root)}
    for args in (
        [BIN / "ruff", "check", "."],
        [BIN / "ruff", "format", "--check", "."],
        [BIN / "mypy", "--cache-dir", str(root / ".mypy_cache")],
        [BIN / "lint-imports"],
    ):
        done = _run(args, root, **path)
        assert done.returncode == 0, f"{args[0]}: {done.stdout[-3000:]}{done.stderr[-2000:]}"
    tests = _run(
        [
            BIN / "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/test_config.py",
            "tests/test_architecture.py",
            "tests/domain/test_openapi.py::test_document_lists_every_public_route",
        ],
        root,
        **path,
    )
    assert tests.returncode == 0, tests.stdout[-3000:]


@pytest.fixture
def running(tree: tuple[Path, str]) -> Iterator[tuple[ServiceProcess, str, Path]]:
    """The tutorial's service from the copy, with a stub for its new downstream."""
    root, package = tree
    prefix = package.upper()
    env = {"PYTHONPATH": str(root), f"{prefix}_LOG__FORMAT": "json"}
    stub = ServiceProcess(
        ["stub", "--name", "payments", "--port", "0"], env=env, cwd=root, module=package
    ).start()
    sink = root / "data" / "tutorial-events.jsonl"
    try:
        stub_port = stub.wait_listening()["http"]
        service = ServiceProcess(
            ["serve"],
            env={
                **env,
                **{f"{prefix}_{k}__HOST": "127.0.0.1" for k in ("HTTP", "TCP", "ADMIN")},
                **{f"{prefix}_{k}__PORT": "0" for k in ("HTTP", "TCP", "ADMIN")},
                f"{prefix}_PIPELINE__SINK_PATH": str(sink),
                f"{prefix}_DOWNSTREAM__SERVICES__PAYMENTS__URL": f"http://127.0.0.1:{stub_port}",
            },
            cwd=root,
            module=package,
        ).start()
        try:
            service.wait_listening()
            yield service, package, sink
        finally:
            if service.proc is not None and service.proc.poll() is None:
                service.proc.kill()
                service.wait(10)
    finally:
        stub.stop()


def _json(url: str, body: bytes | None = None) -> tuple[int, Any]:
    req = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        return resp.status, json.loads(resp.read())


def test_the_new_route_downstream_stage_and_metric_work(
    running: tuple[ServiceProcess, str, Path],
) -> None:
    service, package, sink = running
    status, body = _json(service.url("/v1/users/u7/payments"))
    assert (status, body["payments"]) == (200, {"name": "payments", "path": "/payments/u7"})
    status, accepted = _json(service.url("/v1/events"), b'{"user_id": "u7", "type": "click"}')
    assert status == 202
    deadline = time.monotonic() + 10
    while not (sink.exists() and sink.read_bytes().endswith(b"\n")):
        assert time.monotonic() < deadline, "the event never reached the sink"
        time.sleep(0.05)
    [line] = [json.loads(raw) for raw in sink.read_text().splitlines()]
    assert line["id"] == accepted["ids"][0]
    assert line["region"] == "eu-west"  # the new stage ran
    assert "enrichment" not in line  # the demo's stage is gone
    metrics = scrape(service.url("/metrics", "admin"))
    assert metrics[f'{package}_events_tagged_total{{region="eu-west"}}'] == 1
    assert metrics[f'{package}_downstream_requests_total{{outcome="ok",service="payments"}}'] == 1
    assert f'{package}_pipeline_queue_depth{{stage="region"}}' in metrics
    service.signal(signal.SIGTERM)
    assert service.wait(30) == 0
