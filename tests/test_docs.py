"""The README stays true: its best-practice map, commands, settings and metrics exist."""

from __future__ import annotations

import ast
import re
import shlex
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from service import cli
from service.app import create_app
from service.cli import build_parser
from service.runtime.keys import METRICS
from service.settings import Settings
from tests.support.settings import make_settings

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
PACKAGE = Path(cli.__file__).parent.name  # "service", or the name `make rename` gave it

# The practices this template teaches; each must have a row in the map.
PRACTICES = (
    "uvloop",
    "client-handling core",
    "bounded queues",
    "TaskGroup",
    "cancellation",
    "timeouts",
    "run_in_executor",
    "async context managers",
    "async iterators",
    "semaphores",
    "task references",
    "debug mode",
    "task-state monitoring",
)


def section(title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", README, re.S | re.M)
    assert match, f"README has no '## {title}' section"
    return match.group(1)


def map_rows() -> list[str]:
    return [
        line
        for line in section("Best-practice map").splitlines()
        if line.startswith("| ") and not line.startswith("| practice")
    ]


def defined_names(path: Path) -> set[str]:
    """Qualified names of the classes and functions a module defines (``A.b`` for methods)."""
    names: set[str] = set()

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                name = f"{prefix}{child.name}"
                names.add(name)
                visit(child, f"{name}.")

    visit(ast.parse(path.read_text()), "")
    return names


def links() -> list[tuple[str, str | None]]:
    found = []
    for row in map_rows():
        for ref in re.findall(rf"`((?:{PACKAGE}|tests)/[^`:]+?)(?:::([\w.]+))?`", row):
            found.append((ref[0], ref[1] or None))
    return found


def test_the_map_covers_every_practice_of_the_template() -> None:
    text = "\n".join(map_rows()).lower()
    missing = [p for p in PRACTICES if p.lower() not in text]
    assert not missing, f"practices without a row in the best-practice map: {missing}"
    for row in map_rows():
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert "service/" in cells[1], f"no implementation linked: {row}"
        assert "tests/" in cells[2], f"no test linked: {row}"


@pytest.mark.parametrize(("path", "name"), links(), ids=lambda v: str(v))
def test_every_linked_file_function_and_test_exists(path: str, name: str | None) -> None:
    file = ROOT / path
    assert file.is_file(), f"{path} does not exist"
    if name is not None:
        assert name in defined_names(file), f"{path} defines no {name}"


def test_every_make_target_the_readme_names_exists() -> None:
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z][a-z-]*):", makefile, re.M))
    named = set(re.findall(r"`make ([a-z][a-z-]*)", README))
    named |= set(re.findall(r"^make ([a-z][a-z-]*)", README, re.M))
    assert named, "the README names no make target"
    assert named <= targets, f"README names missing targets: {sorted(named - targets)}"


def test_every_service_command_in_the_readme_parses() -> None:
    parser = build_parser()
    commands = []
    for block in re.findall(r"```(?:sh|bash)\n(.*?)```", README, re.S):
        for line in block.splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line.startswith(f"{parser.prog} "):
                commands.append(shlex.split(line)[1:])
    assert commands, "the README shows no service command"
    for argv in commands:
        parser.parse_args(argv)  # SystemExit (a bad command) fails the test


def test_the_configuration_table_names_real_sections() -> None:
    sections = set(re.findall(r"^\| `(\w+)` \|", section("Configuration"), re.M))
    assert sections == set(Settings.model_fields), sections ^ set(Settings.model_fields)


@pytest.mark.asyncio
async def test_every_metric_in_the_readme_table_is_exported() -> None:
    app = create_app(make_settings())
    async with TestClient(TestServer(app)):  # started: every component has its metrics
        metrics = app[METRICS]
        exported = {f.name for f in metrics._families} | {metrics.tasks.name}
    exported = {n.removesuffix("_total") for n in exported}
    named = set(re.findall(rf"`({metrics.namespace}_[a-z_]+)`", section("Metrics")))
    assert named, "the metrics table names nothing"
    missing = {n for n in named if n.removesuffix("_total") not in exported}
    assert not missing, f"README lists metrics the service does not define: {sorted(missing)}"


def test_the_architecture_picture_is_there() -> None:
    picture = section("Architecture")
    assert "```mermaid" in picture
    for part in ("ingest queue", "sink writer", "TaskGroup", "offload", "/metrics"):
        assert part in picture, part
