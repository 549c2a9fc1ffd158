"""The docs stay true: every setting, metric, alert, command, file and test they name exists.

The repository carries its own docs (README.md and docs/); nothing in it
points outside it, and no code comment tells history by issue number.
"""

from __future__ import annotations

import ast
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml
from aiohttp.test_utils import TestClient, TestServer
from pydantic import BaseModel

from service import cli
from service.app import create_app
from service.cli import build_parser
from service.runtime.keys import METRICS
from service.settings import Settings
from tests.support.settings import make_settings

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
README = (ROOT / "README.md").read_text()
PAGES = ("contract", "architecture", "operations", "performance", "tutorial")
PACKAGE = Path(cli.__file__).parent.name  # "service", or the name `make rename` gave it

# The practices this template teaches; each must have a row in the map.
PRACTICES = (
    "uvloop",
    "client-handling core",
    "bounded queues",
    "TaskGroup",
    "cancellation",
    "futures",
    "shield",
    "timeouts",
    "cooperative yield",
    "run_in_executor",
    "async context managers",
    "async iterators",
    "semaphores",
    "task references",
    "task exceptions",
    "debug mode",
    "task-state monitoring",
)


def page(name: str) -> str:
    return (DOCS / f"{name}.md").read_text()


def section(text: str, title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert match, f"no '## {title}' section"
    return match.group(1)


def tracked() -> list[Path]:
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True)
    return [ROOT / p for p in out.stdout.decode().split("\0") if p and (ROOT / p).is_file()]


# -- the repository is self-contained ------------------------------------------------------


def test_the_docs_pages_exist_and_the_readme_links_into_them() -> None:
    for name in PAGES:
        assert (DOCS / f"{name}.md").is_file(), f"docs/{name}.md is missing"
    for target in re.findall(r"\]\((docs/[\w./-]+\.md)(?:#[\w-]+)?\)", README):
        assert (ROOT / target).is_file(), f"README links to a missing {target}"
    for name in PAGES:
        assert f"docs/{name}.md" in README, f"README does not link docs/{name}.md"


def test_the_readme_is_short() -> None:
    assert len(README.splitlines()) <= 250


def test_nothing_points_outside_the_repository() -> None:
    outside = "../" + "shared"
    offenders = [
        str(p.relative_to(ROOT))
        for p in tracked()
        if p.suffix not in (".png", ".jpg") and outside in p.read_text(errors="replace")
    ]
    assert offenders == []


def test_no_issue_numbers_in_code_config_deploy_files_or_ci() -> None:
    pattern = re.compile(r"\bissue\s*#?\d+", re.I)
    kinds = {".py", ".toml", ".yml", ".yaml", ".json", ".cfg", ".c"}
    names = {"Makefile", "Dockerfile", "run"}
    offenders = []
    for path in tracked():
        if path.suffix in kinds or path.name in names:
            for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
                if pattern.search(line):
                    offenders.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert offenders == []


# -- the contract ----------------------------------------------------------------------------


def _setting_keys(model: type[BaseModel], prefix: str = "") -> set[str]:
    keys: set[str] = set()
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            keys |= _setting_keys(ann, f"{prefix}{name}.")
        elif getattr(ann, "__origin__", None) is dict:
            entry = ann.__args__[1]  # type: ignore[union-attr]
            keys |= {f"{prefix}{name}.<name>.{key}" for key in entry.model_fields}
        else:
            keys.add(f"{prefix}{name}")
    return keys


def test_every_setting_is_in_the_contract() -> None:
    table = section(page("contract"), "Configuration")
    named = set(re.findall(r"`([a-z_]+(?:\.[a-z_<>]+)+)`", table))
    # A table row may name a table entry's keys together: `....workers`, `.capacity`.
    for first, rest in re.findall(r"`([a-z_.<>]+)\.[a-z_]+`((?:, `\.[a-z_]+`)+)", table):
        named |= {first + key for key in re.findall(r"`(\.[a-z_]+)`", rest)}
    keys = _setting_keys(Settings)
    # Table entries list their own keys; the shared ones they may override are
    # documented once, under the shared section.
    keys = {
        k for k in keys if not k.startswith("downstream.services.<name>.") or k.endswith(".url")
    }
    missing = sorted(k for k in keys if k not in named)
    assert missing == [], f"settings missing from docs/contract.md: {missing}"


@pytest.mark.asyncio
async def test_the_contracts_metrics_table_and_the_exported_metrics_agree() -> None:
    app = create_app(make_settings())
    async with TestClient(TestServer(app)):  # started: every component has its metrics
        metrics = app[METRICS]
        exported = {f.name.removesuffix("_total") for f in metrics._families}
        exported.add(metrics.tasks.name)
    named = set(
        re.findall(rf"`({metrics.namespace}_[a-z_]+)`", section(page("contract"), "Metrics"))
    )
    named = {n.removesuffix("_total") for n in named}
    assert named - exported == set(), "the contract lists metrics the service does not define"
    assert exported - named == set(), "the service defines metrics the contract does not list"


# -- architecture, operations, practices --------------------------------------------------------


def test_the_architecture_picture_is_there() -> None:
    picture = section(page("architecture"), "Data flow")
    assert "```mermaid" in picture
    for part in ("ingest queue", "sink writer", "TaskGroup", "offload", "/metrics"):
        assert part in picture, part


def test_every_alert_has_a_runbook_entry() -> None:
    rules = yaml.safe_load((ROOT / "config" / "prometheus" / "alerts.yml").read_text())
    alerts = [rule["alert"] for group in rules["groups"] for rule in group["rules"]]
    runbook = section(page("operations"), "Runbook")
    headings = set(re.findall(r"^### (\w+)$", runbook, re.M))
    assert alerts
    assert set(alerts) == headings


def map_rows() -> list[list[str]]:
    rows = []
    for line in page("practices").splitlines():
        if line.startswith("| ") and not line.startswith("| practice"):
            rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    return rows


def _refs(cell: str) -> list[tuple[str, str | None]]:
    found = re.findall(rf"`((?:{PACKAGE}|tests)/[^`:]+?)(?:::([\w.]+))?`", cell)
    return [(path, name or None) for path, name in found]


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


def test_the_map_covers_every_practice() -> None:
    text = "\n".join(" ".join(row) for row in map_rows()).lower()
    missing = [p for p in PRACTICES if p.lower() not in text]
    assert missing == [], f"practices without a row in docs/practices.md: {missing}"


@pytest.mark.parametrize("row", map_rows(), ids=lambda row: row[0][:40])
def test_each_row_cites_code_and_a_test_that_exercises_it(row: list[str]) -> None:
    practice, implementation, proof = row
    code, tests = _refs(implementation), _refs(proof)
    assert code, f"no code cited for {practice}"
    assert tests, f"no test cited for {practice}"
    for path, name in [*code, *tests]:
        assert (ROOT / path).is_file(), f"{path} does not exist"
        if name is not None:
            assert name in defined_names(ROOT / path), f"{path} defines no {name}"
    # The test's module refers to the cited code: by its module path, its
    # module's name, or a cited class or function.
    for path, _ in tests:
        source = (ROOT / path).read_text()
        modules = {p.removesuffix(".py").replace("/", ".") for p, _ in code}
        names = {n.split(".")[-1] for _, n in code if n} | {n.split(".")[0] for _, n in code if n}
        names |= {Path(p).stem for p, _ in code}
        assert any(m in source for m in modules) or any(
            re.search(rf"\b{re.escape(n)}\b", source) for n in names
        ), f"{path} does not refer to the code it is cited for ({practice})"


# -- commands ---------------------------------------------------------------------------------


def _docs_text() -> str:
    return README + "\n".join(page(name) for name in (*PAGES, "practices", "reliability"))


def test_every_make_target_the_docs_name_exists() -> None:
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z][a-z-]*):", makefile, re.M))
    text = _docs_text()
    named = set(re.findall(r"`make ([a-z][a-z-]*)", text))
    named |= set(re.findall(r"^make ([a-z][a-z-]*)", text, re.M))
    assert named, "the docs name no make target"
    assert named <= targets, f"the docs name missing targets: {sorted(named - targets)}"


def test_every_service_command_in_the_docs_parses() -> None:
    parser = build_parser()
    commands = []
    for block in re.findall(r"```(?:sh|bash)\n(.*?)```", _docs_text(), re.S):
        for line in block.splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line.startswith(f"{parser.prog} "):
                commands.append(shlex.split(line)[1:])
    assert commands, "the docs show no service command"
    for argv in commands:
        parser.parse_args(argv)  # SystemExit (a bad command) fails the test
