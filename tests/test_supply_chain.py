"""What gets installed, and from where: the lock, the updates, the workflows.

uv.lock pins every package with its hashes and must agree with pyproject.toml;
uv itself is installed from the lock's own entry; a plain install (the runtime
dependencies, as in the image) serves and runs `service loadtest`; the Python
versions declared are the ones CI tests; every workflow action is pinned by
commit, every checkout keeps no credentials; Dependabot proposes updates for
every ecosystem, grouped and after a cooldown.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from tests.deploy.artifacts import dockerfile_stages, instruction
from tests.support.process import ROOT, require_tool, running_service

PYPROJECT = ROOT / "pyproject.toml"
LOCK = ROOT / "uv.lock"
WORKFLOWS = ROOT / ".github" / "workflows"
DEPENDABOT = ROOT / ".github" / "dependabot.yml"
# `uses: owner/repo[/path]@<40 hex> # v1.2.3`: the commit is what runs, the
# comment is for people and for Dependabot, which updates both.
PINNED = re.compile(r"^[\w.-]+/[\w./-]+@[0-9a-f]{40}$")
VERSION_COMMENT = re.compile(r"^v\d+(\.\d+){0,2}$")


def project() -> dict[str, Any]:
    with PYPROJECT.open("rb") as f:
        return dict(tomllib.load(f)["project"])


def lock() -> dict[str, Any]:
    with LOCK.open("rb") as f:
        return tomllib.load(f)


def uv() -> str:
    return shutil.which("uv", path=str(Path(sys.executable).parent)) or require_tool("uv")


def workflows() -> dict[str, dict[str, Any]]:
    found = {p.name: yaml.safe_load(p.read_text()) for p in sorted(WORKFLOWS.glob("*.y*ml"))}
    assert found, "no workflows"
    return found


def declared_pythons() -> list[str]:
    return [
        c.rsplit(" :: ", 1)[1]
        for c in project()["classifiers"]
        if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c)
    ]


def minor(v: str) -> tuple[int, int]:
    major, minor_ = v.split(".")[:2]
    return int(major), int(minor_)


# -- the lock ----------------------------------------------------------------------------


def test_the_lock_pins_every_package_with_hashes() -> None:
    packages = lock()["package"]
    assert len(packages) > 20
    for package in packages:
        if "editable" in package["source"] or "virtual" in package["source"]:
            continue  # this project itself
        assert "registry" in package["source"], package["name"]
        files = [*package.get("wheels", []), *([package["sdist"]] if "sdist" in package else [])]
        assert files, f"{package['name']}: no files"
        assert all(re.fullmatch(r"sha256:[0-9a-f]{64}", f["hash"]) for f in files), package["name"]
    locked = {p["name"] for p in packages}
    for requirement in project()["dependencies"]:
        name = re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].lower().replace("_", "-")
        assert name in locked, f"{name} is declared but not locked"


def test_the_lock_agrees_with_pyproject_and_a_change_is_caught(tmp_path: Path) -> None:
    check = [uv(), "lock", "--check", "--offline", "--no-progress", "--python", sys.executable]
    env = {"PATH": str(Path(sys.executable).parent), "UV_PYTHON_DOWNLOADS": "never"}
    assert subprocess.run(check, cwd=ROOT, env=env, capture_output=True).returncode == 0
    # The same check on a copy whose pyproject.toml moved a floor fails.
    shutil.copy(LOCK, tmp_path / "uv.lock")
    text = PYPROJECT.read_text()
    assert '"orjson>=3.10,<4"' in text
    (tmp_path / "pyproject.toml").write_text(text.replace('"orjson>=3.10,<4"', '"orjson>=3.11,<4"'))
    (tmp_path / "README.md").write_text("")
    stale = subprocess.run(check, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert stale.returncode != 0
    assert "orjson" in stale.stderr


def test_uv_comes_from_the_locks_own_pin() -> None:
    """`make` and the Dockerfile pip-install uv from this line: the lock's version and hashes."""
    line = subprocess.run(
        [sys.executable, ROOT / "scripts" / "uv_requirement.py", LOCK],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    [entry] = [p for p in lock()["package"] if p["name"] == "uv"]
    hashes = {f["hash"] for f in [*entry["wheels"], entry["sdist"]]}
    name, *options = line.split()
    assert name == f"uv=={entry['version']}"
    assert {o.removeprefix("--hash=") for o in options} == hashes
    assert version("uv") == entry["version"]  # and the venv runs that one


# -- what a plain install holds ----------------------------------------------------------


@pytest.fixture(scope="module")
def plain_install(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv with only the runtime dependencies from uv.lock: what the image gets."""
    venv = tmp_path_factory.mktemp("plain") / "venv"
    env = {
        "PATH": str(Path(sys.executable).parent),
        "HOME": str(Path.home()),
        "UV_PROJECT_ENVIRONMENT": str(venv),
        "UV_PYTHON_DOWNLOADS": "never",
    }
    done = subprocess.run(
        [uv(), "sync", "--locked", "--no-dev", "--no-install-project", "--python", sys.executable],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return venv / "bin" / "python"


def test_a_plain_install_serves_and_runs_the_loadtest(plain_install: Path) -> None:
    """`service loadtest` is part of the product: the runtime dependencies carry it."""
    python = str(plain_install)
    env = {"PYTHONPATH": str(ROOT)}
    dev_tool = subprocess.run([python, "-c", "import pytest"], capture_output=True)
    assert dev_tool.returncode != 0, "the plain install must not hold the dev tools"
    with running_service(env=env, python=python) as svc:
        for target, address, scenario in (
            ("http", svc.url(), "info"),
            ("tcp", f"127.0.0.1:{svc.ports['tcp']}", "tcp-ping"),
        ):
            argv = [target, address, "--scenario", scenario, "--requests", "200", "-c", "4"]
            run = subprocess.run(
                [python, "-m", "service", "loadtest", *argv, "--json", "-"],
                env={**svc.env, **env},
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert run.returncode == 0, run.stderr
            report = json.loads(run.stdout[run.stdout.index("{") :])
            assert report["requests"] == 200, report
        assert svc.stop() == 0


# -- declared Python versions are the tested ones ----------------------------------------


def test_declared_pythons_are_the_ones_ci_tests() -> None:
    declared = declared_pythons()
    assert declared == sorted(declared, key=minor)
    assert [minor(v) for v in declared] == [
        (3, m) for m in range(minor(declared[0])[1], minor(declared[-1])[1] + 1)
    ], "no gaps"
    spec = SpecifierSet(project()["requires-python"])
    low, high = minor(declared[0]), minor(declared[-1])
    assert all(Version(f"{v}.0") in spec for v in declared), spec
    assert Version(f"{low[0]}.{low[1] - 1}.99") not in spec, spec
    assert Version(f"{high[0]}.{high[1] + 1}.0") not in spec, spec
    matrix = workflows()["ci.yml"]["jobs"]["test"]["strategy"]["matrix"]
    tested = set(matrix["python"])
    trials = {entry["python"] for entry in matrix.get("include", []) if entry.get("trial")}
    assert tested <= set(declared), "CI tests a version that is not declared"
    assert set(declared) <= tested | trials, "a declared version is not tested"
    job = workflows()["ci.yml"]["jobs"]["test"]
    assert job["continue-on-error"] == "${{ matrix.trial == true }}"
    # The image runs the newest Python that CI tests for real.
    [base] = [
        rest.partition("=")[2]
        for ins, rest in dockerfile_stages()[0]
        if ins == "ARG" and rest.startswith("PYTHON_IMAGE=")
    ]
    m = re.match(r"python:(3\.\d+)\.\d+-", base)
    assert m, base
    assert m.group(1) == max(tested, key=minor), base


# -- workflows ---------------------------------------------------------------------------


def test_every_action_is_pinned_by_commit_with_its_version_in_a_comment() -> None:
    uses = []
    for path in sorted(WORKFLOWS.glob("*.y*ml")):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            m = re.match(r"^\s*(?:-\s+)?uses:\s*(\S+)\s*(?:#\s*(\S+))?", line)
            if m:
                uses.append((f"{path.name}:{n}", m.group(1), m.group(2) or ""))
    assert len(uses) >= 5
    for where, ref, comment in uses:
        assert PINNED.match(ref), f"{where}: {ref} is not pinned by a 40-character commit"
        assert VERSION_COMMENT.match(comment), f"{where}: no '# vX.Y.Z' after {ref}"


def test_workflows_keep_no_credentials_ask_little_and_cancel_stale_runs() -> None:
    for name, doc in workflows().items():
        assert doc["permissions"] == {}, f"{name}: each job asks for its own permissions"
        assert doc["concurrency"]["cancel-in-progress"] is True, name
        assert "${{ github.ref }}" in doc["concurrency"]["group"], name
        for job_name, job in doc["jobs"].items():
            perms = job.get("permissions", {})
            assert perms.get("contents") == "read", (name, job_name)
            writes = {k for k, v in perms.items() if v == "write"}
            assert writes <= {"security-events"}, (name, job_name, writes)
            assert job.get("timeout-minutes"), (name, job_name)
            for step in job["steps"]:
                if step.get("uses", "").startswith("actions/checkout@"):
                    assert step["with"]["persist-credentials"] is False, (name, job_name)


def test_ci_caches_dependencies_and_keeps_the_sbom() -> None:
    ci = workflows()["ci.yml"]["jobs"]
    caches = [
        s["with"] for s in ci["test"]["steps"] if s.get("uses", "").startswith("actions/cache@")
    ]
    assert caches, "the test job restores uv's cache"
    assert "hashFiles('uv.lock')" in caches[0]["key"]
    container = [s.get("run", "") for s in ci["container"]["steps"]]
    assert any(r.startswith("make image") for r in container)
    assert "make sbom" in container
    uploads = [s for s in ci["container"]["steps"] if "upload-artifact@" in s.get("uses", "")]
    assert uploads
    assert uploads[0]["with"]["path"] == "build/sbom.cdx.json"
    codeql = workflows()["codeql.yml"]["jobs"]["analyze"]
    assert "python" in codeql["strategy"]["matrix"]["language"]


def test_dependabot_updates_every_ecosystem_grouped_after_a_cooldown() -> None:
    config = yaml.safe_load(DEPENDABOT.read_text())
    assert config["version"] == 2
    updates = {u["package-ecosystem"]: u for u in config["updates"]}
    assert set(updates) == {"uv", "docker", "docker-compose", "github-actions"}
    for ecosystem, update in updates.items():
        assert update["directory"] == "/", ecosystem
        assert update["schedule"]["interval"] in ("daily", "weekly", "monthly"), ecosystem
        assert update["cooldown"]["default-days"] >= 3, ecosystem
        assert update["groups"], ecosystem


def test_the_dockerfile_installs_from_the_lock_before_the_code() -> None:
    [builder] = [
        stage for stage in dockerfile_stages() if stage and stage[0][1].endswith(" AS builder")
    ]
    steps = [(ins, rest) for ins, rest in builder if ins in ("COPY", "RUN")]
    copied = [i for i, (ins, rest) in enumerate(steps) if ins == "COPY" and "uv.lock" in rest]
    code = [i for i, (ins, rest) in enumerate(steps) if ins == "COPY" and "service/" in rest]
    syncs = [i for i, (ins, rest) in enumerate(steps) if ins == "RUN" and "uv sync" in rest]
    assert copied
    assert code
    first, last = syncs
    assert copied[0] < first < code[0] < last, "dependencies before the code"
    for i in syncs:
        rest = steps[i][1]
        assert "--locked" in rest
        assert "--mount=type=cache" in rest
    assert "--no-install-project" in steps[first][1]
    assert "--no-editable" in steps[last][1]
    assert any("--require-hashes" in rest for ins, rest in steps if ins == "RUN")
    labels = instruction(dockerfile_stages()[-1], "LABEL")
    for key in ("source", "version", "revision"):
        assert f"org.opencontainers.image.{key}=" in labels, key
