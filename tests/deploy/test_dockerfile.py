"""The Dockerfile: hadolint, its shape, and its exact command run for real.

There is no Docker engine here: the service is started with the final stage's
ENTRYPOINT, CMD, ENV and WORKDIR (the image's venv is the test's venv), and the
HEALTHCHECK command runs against it.
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
from pathlib import Path

import pytest

from service.runtime.settings import AdminSettings
from tests.deploy.artifacts import (
    APP,
    DOCKERFILE,
    SHUTDOWN_MARGIN,
    dockerfile_env,
    dockerfile_stages,
    exec_form,
    final_stage,
    healthcheck_command,
    http_post_json,
    instruction,
    settings_with_env,
    shutdown_budget,
)
from tests.support.process import ROOT, free_port, http_get, require_tool


def test_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or require_tool(
        "hadolint"
    )
    result = subprocess.run(
        [hadolint, "--failure-threshold", "info", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_is_multi_stage_slim_pinned_non_root_and_signal_safe() -> None:
    stages = [s for s in dockerfile_stages() if s]
    assert len(stages) >= 2, "dependencies are built in a separate stage"
    final = stages[-1]
    args = {k: v for ins, rest in stages[0] if ins == "ARG" for k, _, v in [rest.partition("=")]}
    base = instruction(final, "FROM")
    base = args.get(base.strip("${}"), base)
    m = re.fullmatch(r"python:3\.(\d+)\.\d+-slim(-\w+)?", base)
    assert m, f"base image not an exact slim patch release: {base}"
    classifiers = (ROOT / "pyproject.toml").read_text()
    assert f"Programming Language :: Python :: 3.{m.group(1)}" in classifiers
    # The final stage takes the venv from the builder and nothing from the build
    # context, installs nothing, and runs as a numeric non-root user.
    copies = [rest for ins, rest in final if ins == "COPY"]
    assert copies
    assert all(c.startswith("--from=builder") for c in copies), copies
    assert not any(
        "pip install" in rest or "apt-get" in rest for ins, rest in final if ins == "RUN"
    )
    user = instruction(final, "USER").split(":")[0]
    assert user.isdigit()
    assert int(user) != 0
    assert instruction(final, "STOPSIGNAL") == "SIGTERM"
    assert exec_form(instruction(final, "ENTRYPOINT")) == ["python", "-m", APP]
    assert exec_form(instruction(final, "CMD")) == ["serve"]
    health = healthcheck_command(final)
    assert not {"curl", "wget"} & set(health)
    env = dockerfile_env(final)
    # Prometheus reaches the admin port on the container network; the embedded
    # default keeps it on loopback everywhere else.
    assert env["SERVICE_ADMIN__HOST"] == "0.0.0.0"
    assert AdminSettings().host == "127.0.0.1"
    assert "SERVICE_PIPELINE__SINK_PATH" in env
    # .dockerignore is an allow-list ("*", then "!path"): what the builder copies
    # from the context, and nothing else, reaches the build.
    ignore = [
        ln
        for ln in (ROOT / ".dockerignore").read_text().splitlines()
        if ln and not ln.startswith("#")
    ]
    assert ignore[0] == "*"
    allowed = {ln[1:].rstrip("/") for ln in ignore if ln.startswith("!")}
    sources = {
        src.rstrip("/")
        for stage in stages[:-1]
        for ins, rest in stage
        if ins == "COPY" and not rest.startswith("--from")
        for src in rest.split()[:-1]
    }
    assert sources == allowed


def test_container_command_serves_and_passes_its_healthcheck(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENTRYPOINT + CMD with the Dockerfile's ENV and WORKDIR; only ports overridden.

    The image's venv (/opt/venv) is this test's venv, and WORKDIR is a temporary
    directory (it holds the sink's data volume). The HEALTHCHECK reads the HTTP
    port from the environment, so the same command works with the free port.
    """
    stage = final_stage()
    image_env = dockerfile_env(stage)
    venv = "/opt/venv"
    assert image_env["PATH"].startswith(f"{venv}/bin:")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SERVICE_")}
    for key, value in image_env.items():
        env[key] = value.replace(venv, sys.prefix).replace("$PATH", os.environ["PATH"])
    ports = {"http": free_port(), "tcp": free_port(), "admin": free_port()}
    env.update({f"SERVICE_{name.upper()}__PORT": str(port) for name, port in ports.items()})

    def resolve(argv: list[str]) -> list[str]:
        exe = shutil.which(argv[0], path=env["PATH"])
        assert exe is not None, f"{argv[0]} not on the image's PATH"
        assert exe.startswith(sys.prefix)
        return [exe, *argv[1:]]

    command = resolve(
        [*exec_form(instruction(stage, "ENTRYPOINT")), *exec_form(instruction(stage, "CMD"))]
    )
    health = resolve(healthcheck_command(stage))
    workdir = tmp_path / instruction(stage, "WORKDIR").lstrip("/")
    workdir.mkdir(parents=True)

    def healthy() -> bool:
        return (
            subprocess.run(
                health, env=env, cwd=workdir, capture_output=True, timeout=10, check=False
            ).returncode
            == 0
        )

    assert not healthy(), "the healthcheck must fail while nothing listens"
    log = (tmp_path / "service.log").open("w+b")
    proc = subprocess.Popen(command, env=env, cwd=workdir, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while not healthy():
            assert proc.poll() is None, f"exited {proc.returncode}"
            assert time.monotonic() < deadline, "healthcheck never passed"
            time.sleep(0.2)
        assert http_get(f"http://127.0.0.1:{ports['http']}/livez")[0] == 200
        # The admin listener honours SERVICE_ADMIN__HOST=0.0.0.0 (reachable, not loopback-only).
        status, _, body = http_get(f"http://127.0.0.1:{ports['admin']}/metrics")
        assert status == 200
        assert b"service_ready 1.0" in body
        # The sink writes under WORKDIR (the image's data volume), per SERVICE_PIPELINE__SINK_PATH.
        status, accepted = http_post_json(
            f"http://127.0.0.1:{ports['http']}/v1/events",
            {"user_id": "1", "type": "container-test"},
        )
        assert status == 202, accepted
        stop_signal = getattr(signal, instruction(stage, "STOPSIGNAL"))
        proc.send_signal(stop_signal)
        code = proc.wait(
            shutdown_budget(settings_with_env(monkeypatch, image_env)) + SHUTDOWN_MARGIN
        )
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        log.seek(0)
        output = log.read().decode(errors="replace")
        log.close()
    lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    assert code == 0, output
    [listening] = [ln for ln in lines if ln.get("event") == "listening"]
    assert {name: listening.get(f"{name}_port") for name in ports} == ports
    assert [ln["exit_code"] for ln in lines if ln.get("event") == "shutdown complete"] == [0]
    sink = workdir / image_env["SERVICE_PIPELINE__SINK_PATH"]
    assert [json.loads(ln)["id"] for ln in sink.read_text().splitlines()] == accepted["ids"]
