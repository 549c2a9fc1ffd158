"""The package's shape holds: no import cycles, small modules, aiohttp internals in one place.

The layer arrows themselves (runtime <- domain, tools <- wiring) are
import-linter contracts in pyproject.toml, checked by ``lint-imports`` in
``make test``; this module checks what those contracts cannot say.
"""

from __future__ import annotations

import ast
from pathlib import Path

import grimp

from service import cli
from tests.support.process import ROOT

PACKAGE = Path(cli.__file__).parent  # "service", or the name `make rename` gave it
MAX_LINES = 350
COMPAT = PACKAGE / "runtime" / "http" / "compat.py"
# Underscored names of the standard library that are public API.
# (sys._current_frames is documented in the sys module, for tools like the watchdog.)
STDLIB_PUBLIC = {"_exit", "_value2member_map_", "_current_frames"}


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_no_module_imports_itself_through_others() -> None:
    """Not one cycle at module level, type-checking imports included."""
    graph = grimp.build_graph(PACKAGE.name, exclude_type_checking_imports=False)
    cycles = []
    for importer in sorted(graph.modules):
        for imported in sorted(graph.find_modules_directly_imported_by(importer)):
            back = graph.find_shortest_chain(importer=imported, imported=importer)
            if back is not None:
                cycles.append(" -> ".join((importer, *back)))
    assert cycles == []


def test_every_module_is_under_the_size_limit() -> None:
    over = {
        str(p.relative_to(ROOT)): n
        for p in _modules()
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert over == {}


def _own_private_names() -> set[str]:
    """Underscored attributes and methods the package itself defines."""
    names: set[str] = set()
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                names.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                names.update(part.strip('"') for part in node.value.split())  # __slots__
    return {n for n in names if n.startswith("_")}


def test_foreign_private_attributes_are_read_in_the_compat_module_only() -> None:
    """Reading another library's underscored attribute happens in http/compat.py, nowhere else.

    (getattr with a string is how the few asyncio and concurrent.futures
    internals are read, each beside its reason; aiohttp's are all in compat.)
    """
    ours = _own_private_names()
    found: dict[str, set[str]] = {}
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Attribute)
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
            ):
                receiver = node.value
                if isinstance(receiver, ast.Name) and receiver.id in ("self", "cls"):
                    continue
                if node.attr in STDLIB_PUBLIC or (path != COMPAT and node.attr in ours):
                    continue
                found.setdefault(str(path.relative_to(ROOT)), set()).add(node.attr)
    assert set(found) == {str(COMPAT.relative_to(ROOT))}, found
