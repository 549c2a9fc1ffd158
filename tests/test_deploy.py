"""The shipped deployment artifacts, checked by real tools and against the running service.

There is no Docker engine here, so each artifact is checked the strongest way
available offline: hadolint for the Dockerfile, the Compose Specification's
JSON schema for docker-compose.yml, promtool for the Prometheus config and
rules, kubernetes-validate's bundled schemas for deploy/k8s/, and real
processes: the service started with exactly the Dockerfile's command and
environment (then its HEALTHCHECK), and `make stack`'s real Prometheus, which
must find every metric that the dashboard and the alert rules query.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from types import ModuleType
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from service.cli import build_parser
from service.config import AdminSettings, HttpSettings, Settings, load_settings
from tests.helpers import IN_CI, ROOT, free_port, http_get, parse_metrics, require_tool

DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "docker-compose.yml"
PROMETHEUS_DIR = ROOT / "config" / "prometheus"
GRAFANA_DIR = ROOT / "config" / "grafana"
DASHBOARD = GRAFANA_DIR / "dashboards" / "overview.json"
K8S_DIR = ROOT / "deploy" / "k8s"
# Time for the process itself around the shutdown steps (interpreter exit, log flush).
SHUTDOWN_MARGIN = 5.0
# The package and console script name: also the compose service and Prometheus job
# (derived, so that the checks follow `make rename`).
APP = build_parser().prog


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
    """The longest the service's shutdown steps can take (service.lifecycle)."""
    s = settings.shutdown
    return s.readiness_delay + s.grace_seconds + s.drain_seconds + 2 * s.cancel_seconds


def settings_with_env(monkeypatch: pytest.MonkeyPatch, env: dict[str, Any]) -> Settings:
    """The settings the service would load from config/default.toml and ``env``'s settings."""
    for key in [k for k in os.environ if k.startswith("SERVICE_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        if key.startswith("SERVICE_"):
            monkeypatch.setenv(key, str(value))
    return load_settings(ROOT / "config" / "default.toml")


PROMQL_WORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring",
                "group_left", "group_right", "inf", "nan", "atan2"}


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


# -- the parsers themselves --------------------------------------------------------

def test_promql_metric_names_skips_functions_labels_and_keywords() -> None:
    expr = ('histogram_quantile(0.99, sum by (route, le) (rate(a_bucket{route=~"/v1.*"}[5m])))'
            ' / on (instance) group_left b_total offset 5m > bool 1e3 and up == 0')
    assert promql_metric_names(expr) == {"a_bucket", "b_total", "up"}


# -- Dockerfile ----------------------------------------------------------------------

def test_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) \
        or require_tool("hadolint")
    result = subprocess.run([hadolint, "--failure-threshold", "info", str(DOCKERFILE)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_is_multi_stage_slim_pinned_non_root_and_signal_safe() -> None:
    stages = [s for s in dockerfile_stages() if s]
    assert len(stages) >= 2, "dependencies are built in a separate stage"
    final = stages[-1]
    args = {k: v for ins, rest in stages[0] if ins == "ARG"
            for k, _, v in [rest.partition("=")]}
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
    assert not any("pip install" in rest or "apt-get" in rest for ins, rest in final
                   if ins == "RUN")
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
    ignore = [ln for ln in (ROOT / ".dockerignore").read_text().splitlines()
              if ln and not ln.startswith("#")]
    assert ignore[0] == "*"
    allowed = {ln[1:].rstrip("/") for ln in ignore if ln.startswith("!")}
    sources = {src.rstrip("/") for stage in stages[:-1] for ins, rest in stage
               if ins == "COPY" and not rest.startswith("--from")
               for src in rest.split()[:-1]}
    assert sources == allowed


def test_container_command_serves_and_passes_its_healthcheck(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
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

    command = resolve([*exec_form(instruction(stage, "ENTRYPOINT")),
                       *exec_form(instruction(stage, "CMD"))])
    health = resolve(healthcheck_command(stage))
    workdir = tmp_path / instruction(stage, "WORKDIR").lstrip("/")
    workdir.mkdir(parents=True)

    def healthy() -> bool:
        return subprocess.run(health, env=env, cwd=workdir, capture_output=True,
                              timeout=10, check=False).returncode == 0

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
        status, accepted = http_post_json(f"http://127.0.0.1:{ports['http']}/v1/events",
                                          {"user_id": "1", "type": "container-test"})
        assert status == 202, accepted
        stop_signal = getattr(signal, instruction(stage, "STOPSIGNAL"))
        proc.send_signal(stop_signal)
        code = proc.wait(shutdown_budget(settings_with_env(monkeypatch, image_env))
                         + SHUTDOWN_MARGIN)
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


# -- docker-compose.yml ------------------------------------------------------------

def schemas_dir() -> Path:
    return Path(os.environ.get("CI_SCHEMAS_DIR", ROOT.parent / "shared" / "schemas"))


def test_compose_file_matches_the_compose_specification() -> None:
    path = schemas_dir() / "compose-spec.json"
    if not path.exists():
        if IN_CI:
            pytest.fail(f"{path} is required in CI (CI_SCHEMAS_DIR)")
        pytest.skip(f"{path} not found: set CI_SCHEMAS_DIR")
    schema = json.loads(path.read_text())
    validator = jsonschema.Draft7Validator(schema)
    doc = compose()
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
              for e in validator.iter_errors(doc)]
    assert errors == []
    # The schema is strict enough to catch a typo.
    doc["services"][APP]["stop_grace_perod"] = "35s"
    assert not validator.is_valid(doc)


def test_compose_services_are_hardened_healthy_and_ordered(
        monkeypatch: pytest.MonkeyPatch) -> None:
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
    for name in ("users", "orders"):
        args = parser.parse_args(services[name]["command"])
        assert (args.command, args.name, args.host) == ("stub", name, "0.0.0.0")
        url = urllib.parse.urlsplit(services[APP]["environment"]
                                    [f"SERVICE_DOWNSTREAM__{name.upper()}_URL"])
        assert (url.hostname, url.port) == (name, args.port)
    loadtest = services["loadtest"]
    entry = loadtest["entrypoint"]
    assert entry[:3] == ["python", "-m", APP]
    args = parser.parse_args([*entry[3:], *loadtest["command"]])
    assert args.command == "loadtest"
    assert args.scenario == "mixed", "drive the demo endpoints, not GET /"
    url = urllib.parse.urlsplit(args.address)
    assert (url.hostname, url.port) == (APP, HttpSettings().port)


def test_compose_stop_grace_period_outlasts_the_shutdown_budget(
        monkeypatch: pytest.MonkeyPatch) -> None:
    svc = compose()["services"][APP]
    settings = settings_with_env(monkeypatch, {**dockerfile_env(final_stage()),
                                               **svc.get("environment", {})})
    budget = shutdown_budget(settings)
    assert duration_seconds(svc["stop_grace_period"]) >= budget + SHUTDOWN_MARGIN, budget


# -- Prometheus and Grafana ----------------------------------------------------------

def test_prometheus_config_rules_and_rule_tests_pass_promtool(tmp_path: Path) -> None:
    promtool = require_tool("promtool")
    stack = load_stack_script()
    generated = tmp_path / "prometheus.yml"
    generated.write_text(yaml.safe_dump(stack.prometheus_config("127.0.0.1:8081", "1s")))
    for args in (["check", "config", str(PROMETHEUS_DIR / "prometheus.yml")],
                 ["check", "config", str(generated)],
                 ["check", "rules", str(PROMETHEUS_DIR / "alerts.yml")],
                 # Each alert fires on synthetic series and stays quiet on healthy ones.
                 ["test", "rules", str(PROMETHEUS_DIR / "alerts_test.yml")]):
        result = subprocess.run([promtool, *args], capture_output=True, text=True,
                                timeout=60, check=False)
        assert result.returncode == 0, result.stdout + result.stderr


def test_alert_rules_cover_the_failure_modes() -> None:
    exprs = rule_exprs()
    wanted = {
        "service_event_loop_lag_seconds_bucket",  # loop lag
        "service_pipeline_queue_capacity",  # queue saturation (depth / capacity)
        "service_http_requests_total",  # error ratio
        "service_downstream_circuit_open",  # breaker open
        "service_asyncio_tasks",  # stuck cancelling
        "service_ready",  # readiness down
    }
    covered = set().union(*(promql_metric_names(e) for e in exprs.values()))
    assert wanted <= covered
    assert any('state="cancelling"' in e for e in exprs.values())
    assert any('status=~"5.."' in e for e in exprs.values())


def test_dashboard_is_valid_and_uses_the_provisioned_datasource() -> None:
    dash = json.loads(DASHBOARD.read_text())
    [source] = yaml.safe_load(
        (GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )["datasources"]
    assert dash["panels"]
    for panel in dash["panels"]:
        assert panel["targets"], panel["title"]
        for target in [panel, *panel["targets"]]:
            assert target["datasource"] == {"type": "prometheus", "uid": source["uid"]}
        assert all(t["expr"].strip() for t in panel["targets"])
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    # What the issue asks the dashboard to show.
    names = set().union(*(promql_metric_names(e) for e in dashboard_exprs()))
    assert {
        "service_http_requests_total", "service_http_request_duration_seconds_bucket",
        "service_event_loop_lag_seconds_bucket", "service_asyncio_tasks",
        "service_pipeline_queue_depth", "service_executor_jobs",
        "service_downstream_requests_total", "service_downstream_circuit_open",
        "service_tcp_connections_active",
    } <= names
    # The provider loads the directory that compose mounts the dashboards into.
    [provider] = yaml.safe_load(
        (GRAFANA_DIR / "provisioning" / "dashboards" / "dashboards.yml").read_text())["providers"]
    grafana = compose()["services"]["grafana"]
    assert f"./config/grafana/dashboards:{provider['options']['path']}:ro" in grafana["volumes"]
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{provider['options']['path']}/{DASHBOARD.name}"


# -- Kubernetes ------------------------------------------------------------------------

def test_k8s_manifests_validate_offline() -> None:
    docs = k8s_documents()
    assert {d["kind"] for d in docs} >= {
        "Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"}
    for doc in docs:
        kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)
    broken = k8s_kind("Deployment")
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGett"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, kubernetes_validate.latest_version(), strict=True)


def test_k8s_deployment_probes_security_and_grace(monkeypatch: pytest.MonkeyPatch) -> None:
    deployment = k8s_kind("Deployment")
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert container["resources"]["requests"]
    assert container["resources"]["limits"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == int(instruction(final_stage(), "USER")
                                                      .split(":")[0])
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert sc["seccompProfile"]["type"] == "RuntimeDefault"
    # The args are real `service` arguments; the env is the image's plus the ConfigMap's.
    assert build_parser().parse_args(container["args"]).command == "serve"
    [ref] = container["envFrom"]
    configmap = k8s_kind("ConfigMap")
    assert ref["configMapRef"]["name"] == configmap["metadata"]["name"]
    settings = settings_with_env(monkeypatch, {**dockerfile_env(final_stage()),
                                               **configmap["data"]})
    # terminationGracePeriodSeconds counts from the start of preStop.
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    budget = pre_stop + shutdown_budget(settings)
    assert settings.shutdown.readiness_delay > 0
    assert pod["terminationGracePeriodSeconds"] >= budget + SHUTDOWN_MARGIN, budget
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert k8s_kind("Service")["spec"]["selector"] == selector
    assert k8s_kind("PodDisruptionBudget")["spec"]["selector"]["matchLabels"] == selector
    target = k8s_kind("HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])


# -- make stack: a real Prometheus against the running service -----------------------

def _drive_traffic(http_port: int, tcp_port: int) -> None:
    """A little of everything, so the labelled families that can get children get them."""
    base = f"http://127.0.0.1:{http_port}"
    for path in ("/livez", "/readyz", "/v1/info", "/v1/users/1/summary", "/no-such-route"):
        for _ in range(3):
            http_get(base + path)
    for path, body in (("/v1/events", {"user_id": "1", "type": "deploy-test"}),
                       ("/v1/hash", {"data": "deploy-test"})):
        http_post_json(base + path, body)
    with socket.create_connection(("127.0.0.1", tcp_port), 5) as conn:
        conn.sendall(b"PING\n")
        conn.settimeout(5)
        assert conn.recv(64).startswith(b"PONG")


def http_post_json(url: str, body: Any) -> tuple[int, Any]:
    """POST a JSON body; the status and the decoded JSON answer (None if not JSON)."""
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            status, raw = int(resp.status), resp.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, None


def _prometheus_api(port: int, path: str, **params: str) -> Any:
    url = f"http://127.0.0.1:{port}/api/v1/{path}"
    if params:
        url += "?" + urllib.parse.urlencode(params)
    status, _, body = http_get(url)
    assert status == 200, body
    return json.loads(body)["data"]


def _family_of(name: str) -> list[str]:
    """The names a sample name's ``# HELP`` line may carry."""
    return [name, *(name[: -len(s)] for s in ("_bucket", "_sum", "_count") if name.endswith(s))]


def test_make_stack_prometheus_scrapes_every_dashboard_and_alert_metric(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`make stack` with free ports: Prometheus finds up == 1 and every queried metric.

    A metric family with samples on /metrics must be found through Prometheus'
    API. A labelled family whose feature has produced no children yet (e.g. the
    breaker gauge before any downstream call) exports only its ``# HELP`` and
    ``# TYPE`` lines and no sample, so Prometheus cannot know it: for those the
    test requires the ``# HELP`` line on /metrics, i.e. the service defines
    it. A name the service does not define at all fails either way.
    """
    require_tool("prometheus")
    ports = {name: free_port() for name in
             ("http", "tcp", "admin", "users", "orders", "prometheus")}
    out = tmp_path / "stack.log"
    with out.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "scripts" / "stack.py"), "--scrape-interval", "1s",
             *(arg for name, port in ports.items() for arg in (f"--{name}-port", str(port)))],
            stdout=log, stderr=subprocess.STDOUT, env={
                k: v for k, v in os.environ.items() if not k.startswith("SERVICE_")},
        )
    try:
        deadline = time.monotonic() + 45
        while b'"stack ready"' not in out.read_bytes():
            assert proc.poll() is None, out.read_text()
            assert time.monotonic() < deadline, out.read_text()
            time.sleep(0.2)
        _drive_traffic(ports["http"], ports["tcp"])
        _, _, body = http_get(f"http://127.0.0.1:{ports['admin']}/metrics")
        text = body.decode()
        sampled = {sample.split("{")[0] for sample in parse_metrics(text)}
        helped = set(re.findall(r"^# HELP (\S+) ", text, re.M))
        queried = queried_metric_names()
        must_scrape = (queried & sampled) | {"up"}
        # Wait for a scrape after the traffic and one rule evaluation.
        deadline = time.monotonic() + 20
        while True:
            known = set(_prometheus_api(ports["prometheus"], "label/__name__/values"))
            groups = _prometheus_api(ports["prometheus"], "rules")["groups"]
            health = {r["name"]: r["health"] for g in groups for r in g["rules"]}
            if must_scrape <= known and set(health.values()) == {"ok"}:
                break
            assert time.monotonic() < deadline, (must_scrape - known, health)
            time.sleep(0.5)
        up = _prometheus_api(ports["prometheus"], "query", query=f'up{{job="{APP}"}}')
        assert [r["value"][1] for r in up["result"]] == ["1"]
        assert set(health) == set(rule_exprs()), "every alert rule is loaded and evaluates"
        print("queried, not yet sampled (checked by # HELP):", sorted(queried - must_scrape))
        for name in sorted(queried - must_scrape):
            assert any(f in helped for f in _family_of(name)), \
                f"{name} is queried by the dashboard or an alert, but not exported"
        # Ctrl-C stops everything; the service drains first and exits cleanly.
        proc.send_signal(signal.SIGINT)
        budget = shutdown_budget(settings_with_env(monkeypatch, {}))
        assert proc.wait(budget + 20) == 0, out.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    lines = [json.loads(ln) for ln in out.read_text().splitlines() if ln.startswith("{")]
    assert [ln["exit_code"] for ln in lines if ln.get("event") == "shutdown complete"] == [0]
    assert lines[-1] == {"event": "stack stopped", "exit_code": 0}
