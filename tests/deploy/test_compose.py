"""docker-compose.yml against the Compose Specification and the service's own needs.

Hardening, start order by health, commands that the service CLI accepts, and a
stop grace period longer than the shutdown budget.
"""

from __future__ import annotations

import json
import re
import urllib.parse

import jsonschema
import pytest
import yaml

from service.cli import build_parser
from service.runtime.settings import HttpSettings
from tests.deploy.artifacts import (
    APP,
    DNS_NAME,
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
from tests.support.process import ROOT


def test_compose_file_matches_the_compose_specification() -> None:
    schema = json.loads((SCHEMAS_DIR / "compose-spec.json").read_text())
    validator = jsonschema.Draft7Validator(schema)
    doc = compose()
    errors = [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)
    ]
    assert errors == []
    # The schema is strict enough to catch a typo.
    doc["services"][DNS_NAME]["stop_grace_perod"] = "35s"
    assert not validator.is_valid(doc)


def test_compose_services_are_hardened_healthy_and_ordered(monkeypatch: pytest.MonkeyPatch) -> None:
    doc = compose()
    services = doc["services"]
    assert {DNS_NAME, "users", "orders", "prometheus", "grafana", "loadtest"} <= set(services)
    for name, svc in services.items():
        assert svc.get("read_only") is True, name
        assert svc.get("cap_drop") == ["ALL"], name
        assert "no-new-privileges:true" in svc.get("security_opt", []), name
        limits = svc["deploy"]["resources"]["limits"]
        assert limits.get("memory"), name
        assert limits.get("pids"), name
        for dep, cond in svc.get("depends_on", {}).items():
            # Monitoring starts with the service, not once it is healthy: an
            # unhealthy service is when its metrics are needed.
            wanted = "service_started" if name == "prometheus" else "service_healthy"
            assert cond == {"condition": wanted}, (name, dep)
            # The dependency must have a healthcheck (the service's is the image's).
            assert dep == DNS_NAME or "test" in services[dep]["healthcheck"], dep
    # Only the public API is published; Prometheus reaches the admin port inside.
    admin_port = str(settings_with_env(monkeypatch, dockerfile_env(final_stage())).admin.port)
    for svc in services.values():
        assert not any(str(p).split(":")[-1] == admin_port for p in svc.get("ports", []))
    prom = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    [job] = prom["scrape_configs"]
    assert job["job_name"] == DNS_NAME
    assert job["static_configs"][0]["targets"] == [f"{DNS_NAME}:{admin_port}"]
    assert services["loadtest"]["profiles"] == ["loadtest"]
    assert services["grafana"]["depends_on"] == {"prometheus": {"condition": "service_healthy"}}
    assert services["prometheus"]["depends_on"] == {DNS_NAME: {"condition": "service_started"}}


def test_compose_commands_parse_with_the_service_cli() -> None:
    """The stub and load-test commands are real ``service`` arguments (image ENTRYPOINT)."""
    services = compose()["services"]
    parser = build_parser()
    env = services[DNS_NAME]["environment"]
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
    args = parser.parse_args(services[DNS_NAME]["command"])
    assert (args.command, args.workers) == ("serve", 0)
    loadtest = services["loadtest"]
    entry = loadtest["entrypoint"]
    assert entry[:3] == ["python", "-m", APP]
    args = parser.parse_args([*entry[3:], *loadtest["command"]])
    assert args.command == "loadtest"
    assert args.scenario == "mixed", "drive the demo endpoints, not GET /"
    url = urllib.parse.urlsplit(args.address)
    assert (url.hostname, url.port) == (DNS_NAME, HttpSettings().port)


def test_compose_stop_grace_period_outlasts_the_shutdown_budget(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    svc = compose()["services"][DNS_NAME]
    settings = settings_with_env(
        monkeypatch, {**dockerfile_env(final_stage()), **svc.get("environment", {})}
    )
    budget = shutdown_budget(settings)
    assert duration_seconds(svc["stop_grace_period"]) >= budget + SHUTDOWN_MARGIN, budget


def test_compose_images_are_pinned_to_exact_releases() -> None:
    """Each third-party image names one release (what Dependabot's compose updates move)."""
    exact = re.compile(r"[\w./-]+:v?\d+\.\d+\.\d+(-[a-z][\w.]*)?(@sha256:[0-9a-f]{64})?")
    images = {
        name: svc["image"] for name, svc in compose()["services"].items() if "build" not in svc
    }
    assert {"redis", "prometheus", "grafana"} <= set(images)
    for name, image in images.items():
        assert exact.fullmatch(image), f"{name}: {image} is not an exact release"


def test_compose_tracing_profile_collects_the_services_spans_into_jaeger(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    services = compose()["services"]
    collector, jaeger, app = services["otel-collector"], services["jaeger"], services[DNS_NAME]
    assert collector["profiles"] == ["tracing"]
    assert jaeger["profiles"] == ["tracing"]
    # Optional: nothing outside the profile waits for it.
    for name, svc in services.items():
        if "tracing" not in svc.get("profiles", []):
            assert not {"otel-collector", "jaeger"} & set(svc.get("depends_on", {})), name
    # Tracing stays off unless asked for; the endpoint is the collector's OTLP/HTTP port.
    env = app["environment"]
    settings = settings_with_env(monkeypatch, {**dockerfile_env(final_stage()), **env})
    assert settings.tracing.enabled is False
    url = urllib.parse.urlsplit(env["OTEL_EXPORTER_OTLP_ENDPOINT"])
    assert (url.hostname, str(url.port)) == ("otel-collector", "4318")
    assert "4318" in collector["expose"]
    # The collector's config: OTLP in on that port, out to Jaeger's OTLP gRPC port.
    config_mount = next(v for v in collector["volumes"] if "otel-collector" in v)
    config = yaml.safe_load((ROOT / config_mount.split(":")[0]).read_text())
    assert config["receivers"]["otlp"]["protocols"]["http"]["endpoint"].endswith(":4318")
    [pipeline] = config["service"]["pipelines"].values()
    [exporter] = pipeline["exporters"]
    assert config["exporters"][exporter]["endpoint"] == "jaeger:4317"
    assert "4317" in jaeger["expose"]
    # Grafana knows Jaeger, and Prometheus keeps the exemplars that point into it.
    [source] = yaml.safe_load(
        (ROOT / "config/grafana/provisioning/datasources/jaeger.yml").read_text()
    )["datasources"]
    assert (source["type"], source["url"]) == ("jaeger", "http://jaeger:16686")
    [prom] = yaml.safe_load(
        (ROOT / "config/grafana/provisioning/datasources/prometheus.yml").read_text()
    )["datasources"]
    assert prom["jsonData"]["exemplarTraceIdDestinations"][0]["datasourceUid"] == source["uid"]
    assert "--enable-feature=exemplar-storage" in services["prometheus"]["command"]
