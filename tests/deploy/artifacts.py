"""What the deploy tests read: the artifacts' paths and small parsers for them.

Dockerfile instructions, compose durations, PromQL metric names, the settings
that a given environment produces, and the shutdown budget they imply.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import urllib.error
import urllib.request
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from service.cli import build_parser
from service.settings import Settings, load_settings
from tests.support.process import ROOT

DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "docker-compose.yml"
PROMETHEUS_DIR = ROOT / "config" / "prometheus"
GRAFANA_DIR = ROOT / "config" / "grafana"
DASHBOARD = GRAFANA_DIR / "dashboards" / "overview.json"
K8S_DIR = ROOT / "deploy" / "k8s"
# The Compose Specification's schema, copied into the repo (its README says from where).
SCHEMAS_DIR = Path(__file__).resolve().parent / "schemas"
# Time for the process itself around the shutdown steps (interpreter exit, log flush).
SHUTDOWN_MARGIN = 5.0
# The package and console script name: also the compose service and Prometheus job
# (derived, so that the checks follow `make rename`).
APP = build_parser().prog
# Compose services and host names, Kubernetes objects and the Prometheus job
# are DNS-1123 labels: the package's name with dashes for underscores.
DNS_NAME = APP.replace("_", "-")
DNS_1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


# -- parsing helpers -------------------------------------------------------------


def dockerfile_stages(path: Path = DOCKERFILE) -> list[list[tuple[str, str]]]:
    """The Dockerfile as stages of (INSTRUCTION, arguments), continuation lines joined."""
    text = re.sub(r"\\\n", " ", path.read_text())
    stages: list[list[tuple[str, str]]] = [[]]
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, rest = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            stages.append([])
        stages[-1].append((instruction, rest.strip()))
    return stages


def final_stage() -> list[tuple[str, str]]:
    return dockerfile_stages()[-1]


def exec_form(args: str) -> list[str]:
    """An exec-form (JSON array) instruction argument; fails on the shell form."""
    value = json.loads(args)
    assert isinstance(value, list), f"not exec form: {args}"
    assert all(isinstance(v, str) for v in value)
    return value


def instruction(stage: list[tuple[str, str]], name: str) -> str:
    """The last occurrence's arguments (Docker uses the last ENTRYPOINT, CMD, ...)."""
    found = [rest for ins, rest in stage if ins == name]
    assert found, f"no {name} in the final stage"
    return found[-1]


def dockerfile_env(stage: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for ins, rest in stage:
        if ins == "ENV":
            for pair in shlex.split(rest):
                key, sep, value = pair.partition("=")
                assert sep, f"use ENV key=value: {rest}"
                env[key] = value
    return env


def healthcheck_command(stage: list[tuple[str, str]]) -> list[str]:
    args = instruction(stage, "HEALTHCHECK")
    _, sep, cmd = args.partition("CMD ")
    assert sep, "HEALTHCHECK without CMD"
    return exec_form(cmd)


def duration_seconds(value: str) -> float:
    """A compose duration ('1m30s', '35s', '500ms') in seconds."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", value)
    assert "".join(a + b for a, b in parts) == value, value
    return sum(float(n) * units[u] for n, u in parts)


def shutdown_budget(settings: Settings) -> float:
    """The longest the service's shutdown steps can take (service.runtime.lifecycle)."""
    s = settings.shutdown
    return s.readiness_delay + s.grace_seconds + s.drain_seconds + 2 * s.cancel_seconds


def settings_with_env(monkeypatch: pytest.MonkeyPatch, env: dict[str, Any]) -> Settings:
    """The settings the service would load from config/default.toml and ``env``'s settings."""
    for key in [k for k in os.environ if k.startswith("SERVICE_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        if key.startswith("SERVICE_"):
            monkeypatch.setenv(key, interpolated(str(value)))
    return load_settings(ROOT / "config" / "default.toml")


def interpolated(value: str) -> str:
    """A compose value with ``${NAME:-default}`` as compose reads it in an empty environment."""
    return re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*:-([^}]*)\}", r"\1", value)


PROMQL_WORDS = {
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "inf",
    "nan",
    "atan2",
}


def promql_metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (functions, labels, keywords left out)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)
    expr = re.sub(r"\{[^}]*\}", " ", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", " ", expr)  # ranges, subqueries, $__rate_interval
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    expr = re.sub(r"\b\d+(?:\.\d+)?(?:[eE][+-]?\d+|ms|[smhdwy])?\b", " ", expr)
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*(?!\w)(\s*\()?", expr):
        if m.group(1) is None and m.group(0).lower() not in PROMQL_WORDS:
            names.add(m.group(0).strip())
    return names


def dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]


def rule_exprs() -> dict[str, str]:
    rules = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())
    return {r["alert"]: r["expr"] for g in rules["groups"] for r in g["rules"]}


def queried_metric_names() -> set[str]:
    names: set[str] = set()
    for expr in [*dashboard_exprs(), *rule_exprs().values()]:
        names |= promql_metric_names(expr)
    return names


def load_stack_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("stack", ROOT / "scripts" / "stack.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return doc


def k8s_documents() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(K8S_DIR.glob("*.yaml")):
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return docs


def k8s_kind(kind: str) -> dict[str, Any]:
    [doc] = [d for d in k8s_documents() if d["kind"] == kind]
    return doc


def http_post_json(url: str, body: Any) -> tuple[int, Any]:
    """POST a JSON body; the status and the decoded JSON answer (None if not JSON)."""
    req = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            status, raw = int(resp.status), resp.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, None
