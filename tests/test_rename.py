"""`make rename NAME=...` leaves a tree that is consistent, type-checks and runs.

The full proof is `make rename NAME=orders_api && make test` in a copy (run it
by hand, it takes minutes); this test renames a copy of the tracked tree and
checks the fast parts: no stale code reference, ruff and mypy clean, and the
renamed package serving with its renamed settings and metric prefix.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.process import ROOT, http_get, running_service

NAME = "orders_api"
BIN = Path(sys.executable).parent
# Code-shaped references to the old name that must all be gone.
STALE = re.compile(
    r"\b(from|import) service\b|-m service\b|\"-m\", \"service\"|\bSERVICE_[A-Z]"
    r"|\bservice_(http|tcp|pipeline|asyncio|event_loop|ready)|\bservice/|"
    r"\"service\.cli:main\"|^service = ",
    re.M,
)


@pytest.fixture(scope="module")
def renamed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # rename.py never renames itself, so its OLD is the template's name still.
    old = re.search(r'^OLD = "(\w+)"', (ROOT / "scripts" / "rename.py").read_text(), re.M)
    if old is None or not (ROOT / old.group(1)).is_dir():
        # After `make rename` this tree is someone's own service: renaming is done.
        pytest.skip("the template was already renamed; nothing to check")
    root = tmp_path_factory.mktemp("renamed") / "tree"
    tracked = (
        subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, check=True, capture_output=True)
        .stdout.decode()
        .split("\0")
    )
    for rel in filter(None, tracked):
        src = ROOT / rel
        if src.is_file():  # tracked but deleted in the work tree: skip
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, root / rel)
    done = subprocess.run(
        [sys.executable, "scripts/rename.py", NAME], cwd=root, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    # What `make rename` does next: re-sort the imports the new name moved, and
    # format again (the new name may make lines longer).
    subprocess.run(
        [BIN / "ruff", "check", "--select", "I", "--fix", "--quiet", "."], cwd=root, check=True
    )
    subprocess.run([BIN / "ruff", "format", "--quiet", "."], cwd=root, check=True)
    return root


def test_the_package_and_every_code_reference_are_renamed(renamed: Path) -> None:
    assert (renamed / NAME / "cli.py").is_file()
    assert not (renamed / "service").exists()
    stale = []
    for path in renamed.rglob("*"):
        if (
            not path.is_file()
            or path.name in ("CHANGELOG.md", "rename.py")
            or path.suffix not in (".py", ".toml", ".yml", ".yaml", ".md", ".json", "")
        ):
            continue
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if STALE.search(line):
                stale.append(f"{path.relative_to(renamed)}:{n}: {line.strip()}")
    assert not stale, "\n".join(stale[:20])
    pyproject = (renamed / "pyproject.toml").read_text()
    assert f'{NAME} = "{NAME}.cli:main"' in pyproject
    compose = (renamed / "docker-compose.yml").read_text()
    assert f"\n  {NAME.replace('_', '-')}:\n" in compose
    assert "condition: service_healthy" in compose  # a keyword of the format, not our name


def test_the_renamed_tree_lints_and_type_checks(renamed: Path) -> None:
    for check in (["check", "."], ["format", "--check", "."]):
        lint = subprocess.run([BIN / "ruff", *check], cwd=renamed, capture_output=True, text=True)
        assert lint.returncode == 0, lint.stdout[-3000:]
    contracts = subprocess.run([BIN / "lint-imports"], cwd=renamed, capture_output=True, text=True)
    assert contracts.returncode == 0, contracts.stdout[-3000:]
    # uv.lock names the project too: `make` installs with --locked, so it must still agree.
    lock = subprocess.run(
        [BIN / "uv", "lock", "--check", "--offline", "--python", sys.executable],
        cwd=renamed,
        capture_output=True,
        text=True,
    )
    assert lock.returncode == 0, lock.stderr[-3000:]
    types = subprocess.run(
        [BIN / "mypy", "--cache-dir", str(renamed / ".mypy_cache")],
        cwd=renamed,
        capture_output=True,
        text=True,
    )
    assert types.returncode == 0, types.stdout[-3000:]


def test_the_renamed_service_serves_with_its_own_prefixes(renamed: Path) -> None:
    env = {
        "PYTHONPATH": str(renamed),
        "PYTHONSAFEPATH": "1",
        "ORDERS_API_PIPELINE__SINK_PATH": str(renamed / "data" / "events.jsonl"),
    }
    for key in ("HTTP", "TCP", "ADMIN"):
        env[f"ORDERS_API_{key}__HOST"] = "127.0.0.1"
        env[f"ORDERS_API_{key}__PORT"] = "0"
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SERVICE_")}
    with running_service(module=NAME, args=["serve"], env={**clean, **env}, cwd=renamed) as proc:
        status, _, _ = http_get(proc.url("/livez"))
        assert status == 200
        _, _, body = http_get(proc.url("/metrics", "admin"))
        text = body.decode()
        assert f"{NAME}_http_requests_total" in text
        assert "\nservice_" not in text
        assert proc.stop() == 0


def test_the_renamed_manifests_and_compose_file_are_valid(renamed: Path) -> None:
    """Kubernetes and compose names take the DNS form; both files still validate."""
    assert "name: orders-api\n" in (renamed / "deploy" / "k8s" / "deployment.yaml").read_text()
    compose = (renamed / "docker-compose.yml").read_text()
    assert "\n  orders-api:\n" in compose
    assert "http://orders-api:8080" in compose
    checks = subprocess.run(
        [
            BIN / "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/deploy/test_k8s.py",
            "tests/deploy/test_compose.py",
        ],
        cwd=renamed,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(renamed)},
    )
    assert checks.returncode == 0, checks.stdout[-3000:]
