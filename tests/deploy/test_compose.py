"""docker-compose.yml against the Compose Specification and the service's own needs.

Hardening, start order by health, commands that the service CLI accepts, and a
stop grace period longer than the shutdown budget.
"""

from __future__ import annotations

import json
import urllib.parse

import jsonschema
import pytest
import yaml

from service.cli import build_parser
from service.runtime.settings import HttpSettings
from tests.deploy.artifacts import (
    APP,
    PROMETHEUS_DIR,
    SCHEMAS_DIR,
    SHUTDOWN_MARGIN,
    compose,
    dockerfile_env,
    duration_seconds,
    final_stage,
    settings_with_env,
    shutdown_budget,
)


def test_compose_file_matches_the_compose_specification() -> None:
    schema = json.loads((SCHEMAS_DIR / "compose-spec.json").read_text())
    validator = jsonschema.Draft7Validator(schema)
    doc = compose()
    errors = [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)
    ]
    assert errors == []
    # The schema is strict enough to catch a typo.
    doc["services"][APP]["stop_grace_perod"] = "35s"
    assert not validator.is_valid(doc)


def test_compose_services_are_hardened_healthy_and_ordered(monkeypatch: pytest.MonkeyPatch) -> None:
    doc = compose()
    services = doc["services"]
    assert {APP, "users", "orders", "prometheus", "grafana", "loadtest"} <= set(services)
    for name, svc in services.items():
        assert svc.get("read_only") is True, name
        assert svc.get("cap_drop") == ["ALL"], name
        assert "no-new-privileges:true" in svc.get("security_opt", []), name
        limits = svc["deploy"]["resources"]["limits"]
        assert limits.get("memory"), name
        assert limits.get("pids"), name
        for dep, cond in svc.get("depends_on", {}).items():
            assert cond == {"condition": "service_healthy"}, (name, dep)
            # The dependency must have a healthcheck (the service's is the image's).
            assert dep == APP or "test" in services[dep]["healthcheck"], dep
    # Only the public API is published; Prometheus reaches the admin port inside.
    admin_port = str(settings_with_env(monkeypatch, dockerfile_env(final_stage())).admin.port)
    for svc in services.values():
        assert not any(str(p).split(":")[-1] == admin_port for p in svc.get("ports", []))
    prom = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    [job] = prom["scrape_configs"]
    assert job["job_name"] == APP
    assert job["static_configs"][0]["targets"] == [f"{APP}:{admin_port}"]
    assert services["loadtest"]["profiles"] == ["loadtest"]
    assert services["grafana"]["depends_on"] == {"prometheus": {"condition": "service_healthy"}}


def test_compose_commands_parse_with_the_service_cli() -> None:
    """The stub and load-test commands are real ``service`` arguments (image ENTRYPOINT)."""
    services = compose()["services"]
    parser = build_parser()
    env = services[APP]["environment"]
    downstreams = {
        key.split("__")[2].lower()
        for key in env
        if key.startswith(f"{APP.upper()}_DOWNSTREAM__SERVICES__")
    }
    assert downstreams == {"users", "orders"}  # a stub service for each downstream
    for name in downstreams:
        args = parser.parse_args(services[name]["command"])
        assert (args.command, args.name, args.host) == ("stub", name, "0.0.0.0")
        url = urllib.parse.urlsplit(env[f"{APP.upper()}_DOWNSTREAM__SERVICES__{name.upper()}__URL"])
        assert (url.hostname, url.port) == (name, args.port)
    # The service: one worker per CPU the container may use.
    args = parser.parse_args(services[APP]["command"])
    assert (args.command, args.workers) == ("serve", 0)
    loadtest = services["loadtest"]
    entry = loadtest["entrypoint"]
    assert entry[:3] == ["python", "-m", APP]
    args = parser.parse_args([*entry[3:], *loadtest["command"]])
    assert args.command == "loadtest"
    assert args.scenario == "mixed", "drive the demo endpoints, not GET /"
    url = urllib.parse.urlsplit(args.address)
    assert (url.hostname, url.port) == (APP, HttpSettings().port)


def test_compose_stop_grace_period_outlasts_the_shutdown_budget(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    svc = compose()["services"][APP]
    settings = settings_with_env(
        monkeypatch, {**dockerfile_env(final_stage()), **svc.get("environment", {})}
    )
    budget = shutdown_budget(settings)
    assert duration_seconds(svc["stop_grace_period"]) >= budget + SHUTDOWN_MARGIN, budget
