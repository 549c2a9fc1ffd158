"""`make rename NAME=...`: turn the template into your own service.

Renames the package directory, the console script, the metric prefix, the
environment prefix (SERVICE_ -> NAME_), the compose services and every code
reference, in place. Run it once, on a fresh copy, then `make test`:

    make rename NAME=orders_api

Prose that merely uses the word "service" is left alone: only code-shaped
references (module paths, commands, identifiers, prefixes) change.
"""

from __future__ import annotations

import argparse
import keyword
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

OLD = "service"
SKIP_DIRS = {
    ".git",
    ".venv",
    ".mypy_cache",
    ".pytest_cache",
    ".ruff_cache",
    ".hypothesis",
    "__pycache__",
    "data",
    "results",
}
SKIP_FILES = {"CHANGELOG.md", "rename.py"}  # history keeps its old names; this script too
TEXT_SUFFIXES = {
    ".py",
    ".toml",
    ".md",
    ".yml",
    ".yaml",
    ".json",
    ".cfg",
    ".txt",
    ".ini",
    ".sh",
    "",
    ".typed",
    ".dockerignore",
    ".gitignore",
}


Subs = list[tuple[re.Pattern[str], str | Callable[[re.Match[str]], str]]]


def substitutions(new: str, python: bool) -> Subs:
    """The rewrites for one file; ``python`` files get the careful module rules.

    In Python code ``service`` is also a common variable name (``service.app``),
    so there module paths are renamed only in imports and inside quotes or
    backticks (``"service.cli:main"``, logger names, docstrings); elsewhere any
    ``service.<name>`` is a module path.
    """
    upper = new.upper()
    # Kubernetes object names, compose services and host names, and the
    # Prometheus job are DNS-1123 labels: no underscores ("orders-api").
    dns = new.replace("_", "-")
    words = r"(serve|stub|loadtest|--version|--help)"
    modules: Subs = (
        [
            (re.compile(r"\b(from|import) service\b"), rf"\1 {new}"),
            (re.compile(r"(?<=[\"'`])service(?=[.:/][A-Za-z_])"), new),
        ]
        if python
        else [
            (re.compile(r"(?<![\w/.:-])service(?=\.[A-Za-z_])"), new),
            (re.compile(r"\b(from|import) service\b"), rf"\1 {new}"),
        ]
    )
    return [
        # Environment prefix: SERVICE_HTTP__PORT -> ORDERS_API_HTTP__PORT.
        (re.compile(r"\bSERVICE_"), f"{upper}_"),
        # The console script (before the module rules rewrite its target).
        (re.compile(r'^service = "service\.cli:main"', re.M), f'{new} = "{new}.cli:main"'),
        *modules,
        (re.compile(r"-m service\b"), f"-m {new}"),
        (re.compile(r'"-m", "service"'), f'"-m", "{new}"'),
        # The package directory in paths: service/, "service" in tool settings.
        (re.compile(r"(?<![\w.-])service/"), f"{new}/"),
        (re.compile(r"(ruff check |mypy )service\b"), rf"\1{new}"),
        (
            re.compile(r'(files|include|testpaths|root_packages|ancestors) = \["service'),
            rf'\1 = ["{new}',
        ),
        (re.compile(r'^name = "service"', re.M), f'name = "{new}"'),
        (re.compile(r'^module-name = "service"', re.M), f'module-name = "{new}"'),
        # The project's own extras (the dev extra includes "service[tracing]").
        (re.compile(r'"service\[(\w+)\]"'), rf'"{new}[\1]"'),
        # Metric prefix and identifiers: service_http_requests_total, service_env
        # (not compose's "condition: service_healthy", a keyword of the format).
        (re.compile(r"\bservice_(?=[A-Za-z])(?!healthy\b|started\b|completed_)"), f"{new}_"),
        (re.compile(r'job="service"'), f'job="{dns}"'),
        (re.compile(r"\bjob: service\b"), f"job: {dns}"),
        (re.compile(r"(job_name: )[\"']?service\b[\"']?"), rf"\1{dns}"),
        # The namespace default.
        (re.compile(r'namespace: (.*)= "service"'), rf'namespace: \1= "{new}"'),
        (re.compile(r'^namespace = "service"', re.M), f'namespace = "{new}"'),
        # The console script in commands: `service serve`, `service loadtest ...`.
        (re.compile(rf"(?<![\w.-])service {words}"), rf"{new} \1"),
        (re.compile(r'"service", "(serve|stub|loadtest)"'), rf'"{new}", "\1"'),
        (re.compile(r'prog="service"'), f'prog="{new}"'),
        (re.compile(r'(module(?: != | == |: str = ))"service"'), rf'\1"{new}"'),
        (re.compile(r'/ "service" /'), f'/ "{new}" /'),
        (re.compile(r'startswith\("service"\)'), f'startswith("{new}")'),
        (re.compile(r"``service``"), f"``{new}``"),
        (re.compile(r"\bservice-(loadtest|overview)\b"), rf"{dns}-\1"),
        (re.compile(r'("tags": \[\s*)"service"'), rf'\1"{new}"'),
        # Compose: the service's own entry and its host name on the compose network.
        (re.compile(r"^  service:$", re.M), f"  {dns}:"),
        (re.compile(r"\bservice:(8080|8081|8888)\b"), rf"{dns}:\1"),
        (re.compile(r"^(\s+)service:\n(\s+condition:)", re.M), rf"\1{dns}:\n\2"),
        (re.compile(r"(app(?:\.kubernetes\.io/name)?: )service\b"), rf"\1{dns}"),
        (re.compile(r"(name: )service\b"), rf"\1{dns}"),
        (re.compile(r"(image: )service\b"), rf"\1{dns}"),
        (re.compile(r"\bservice:(ci|latest|dev|local|0\.1\.0)\b"), rf"{dns}:\1"),
        (re.compile(r"(http://|docker build -t )service\b"), rf"\1{dns}"),
        # Longer names make longer lines: widen the limit by what the name adds.
        (
            re.compile(r"^line-length = (\d+)", re.M),
            lambda m: f"line-length = {int(m.group(1)) + 2 * max(0, len(new) - len(OLD))}",
        ),
    ]


def files(root: Path) -> Iterator[Path]:
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z"], cwd=root, check=True, capture_output=True
        ).stdout.decode()
        paths = [root / p for p in out.split("\0") if p]
    except (OSError, subprocess.CalledProcessError):
        paths = [p for p in root.rglob("*") if p.is_file()]
    for path in paths:
        rel = path.relative_to(root)
        if any(part in SKIP_DIRS for part in rel.parts) or path.name in SKIP_FILES:
            continue
        if path.is_file() and (
            path.suffix in TEXT_SUFFIXES or path.name in ("Makefile", "Dockerfile", "run")
        ):
            yield path


def rename_lock(root: Path, new: str) -> bool:
    """The project's own entry in uv.lock, under its normalized name (PEP 503).

    Only the entry whose source is this directory: the rest of the lock names
    other projects, and a stale project name would fail ``uv sync --locked``.
    """
    lock = root / "uv.lock"
    if not lock.is_file():
        return False
    text = lock.read_text()
    normalized = new.replace("_", "-")
    own = re.search(
        rf'^name = "{OLD}"\nversion = "[^"]*"\nsource = {{ (?:editable|virtual) = "\." }}'
        r"(.*?)(?=^\[\[package\]\]|\Z)",
        text,
        flags=re.M | re.S,
    )
    if own is None:
        return False
    # The entry's name, and its references to itself (an extra that pulls in another).
    entry = own.group(0).replace(f'name = "{OLD}"', f'name = "{normalized}"')
    lock.write_text(text[: own.start()] + entry + text[own.end() :])
    return True


def rename(root: Path, new: str) -> int:
    changed = int(rename_lock(root, new))
    for path in files(root):
        subs = substitutions(new, python=path.suffix == ".py")
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        original = text
        for pattern, repl in subs:
            text = pattern.sub(repl, text)
        if text != original:
            path.write_text(text)
            changed += 1
    pkg = root / OLD
    if pkg.is_dir():
        pkg.rename(root / new)
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", help="the new package name: lower case, digits, underscores")
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent)
    args = parser.parse_args(argv)
    new: str = args.name
    if (
        not re.fullmatch(r"[a-z][a-z0-9_]{1,40}", new)
        or keyword.iskeyword(new)
        or new in sys.stdlib_module_names
        or new == OLD
    ):
        print(
            f"rename: {new!r} is not a usable package name "
            "(lower case, digits, underscores; not a keyword or stdlib module)",
            file=sys.stderr,
        )
        return 2
    if not (args.root / OLD).is_dir():
        print(f"rename: no {OLD}/ package under {args.root} (already renamed?)", file=sys.stderr)
        return 2
    changed = rename(args.root, new)
    print(f"renamed {OLD} -> {new} in {changed} files; now run: make test")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
