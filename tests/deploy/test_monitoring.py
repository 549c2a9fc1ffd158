"""Prometheus and Grafana: promtool, the alert rules, the dashboard, and `make stack`.

`make stack` runs with free ports and a real Prometheus must find `up == 1`
and every metric that the dashboard and the alert rules query.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.artifacts import (
    DASHBOARD,
    DNS_NAME,
    GRAFANA_DIR,
    PROMETHEUS_DIR,
    compose,
    dashboard_exprs,
    http_post_json,
    load_stack_script,
    promql_metric_names,
    queried_metric_names,
    rule_exprs,
    settings_with_env,
    shutdown_budget,
)
from tests.support.process import (
    ROOT,
    free_port,
    http_get,
    parse_metrics,
    require_tool,
    stop_process,
)

# -- the parsers themselves --------------------------------------------------------


def test_promql_metric_names_skips_functions_labels_and_keywords() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (route, le) (rate(a_bucket{route=~"/v1.*"}[5m])))'
        " / on (instance) group_left b_total offset 5m > bool 1e3 and up == 0"
    )
    assert promql_metric_names(expr) == {"a_bucket", "b_total", "up"}


def test_prometheus_config_rules_and_rule_tests_pass_promtool(tmp_path: Path) -> None:
    promtool = require_tool("promtool")
    stack = load_stack_script()
    generated = tmp_path / "prometheus.yml"
    generated.write_text(yaml.safe_dump(stack.prometheus_config("127.0.0.1:8081", "1s")))
    for args in (
        ["check", "config", str(PROMETHEUS_DIR / "prometheus.yml")],
        ["check", "config", str(generated)],
        ["check", "rules", str(PROMETHEUS_DIR / "alerts.yml")],
        # Each alert fires on synthetic series and stays quiet on healthy ones.
        ["test", "rules", str(PROMETHEUS_DIR / "alerts_test.yml")],
    ):
        result = subprocess.run(
            [promtool, *args], capture_output=True, text=True, timeout=60, check=False
        )
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
        "service_asyncio_unhandled_exceptions_total",  # exceptions nobody handled
        "service_asyncio_tasks_finished_total",  # failed tasks
    }
    covered = set().union(*(promql_metric_names(e) for e in exprs.values()))
    assert wanted <= covered
    assert any('state="cancelling"' in e for e in exprs.values())
    assert any('status=~"5.."' in e for e in exprs.values())
    assert any('outcome="failed"' in e for e in exprs.values())


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
        "service_http_requests_total",
        "service_http_request_duration_seconds_bucket",
        "service_event_loop_lag_seconds_bucket",
        "service_asyncio_tasks",
        "service_pipeline_queue_depth",
        "service_executor_jobs",
        "service_downstream_requests_total",
        "service_downstream_circuit_open",
        "service_tcp_connections_active",
        "service_asyncio_tasks_finished_total",  # failed tasks
        "service_asyncio_unhandled_exceptions_total",
        "service_event_loop_stalls_total",
        "service_log_dropped_total",
    } <= names
    # The provider loads the directory that compose mounts the dashboards into.
    [provider] = yaml.safe_load(
        (GRAFANA_DIR / "provisioning" / "dashboards" / "dashboards.yml").read_text()
    )["providers"]
    grafana = compose()["services"]["grafana"]
    assert f"./config/grafana/dashboards:{provider['options']['path']}:ro" in grafana["volumes"]
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{provider['options']['path']}/{DASHBOARD.name}"


# -- make stack: a real Prometheus against the running service -----------------------


def _drive_traffic(http_port: int, tcp_port: int) -> None:
    """A little of everything, so the labelled families that can get children get them."""
    base = f"http://127.0.0.1:{http_port}"
    for path in ("/livez", "/readyz", "/v1/info", "/v1/users/1/summary", "/no-such-route"):
        for _ in range(3):
            http_get(base + path)
    for path, body in (
        ("/v1/events", {"user_id": "1", "type": "deploy-test"}),
        ("/v1/hash", {"data": "deploy-test"}),
    ):
        http_post_json(base + path, body)
    with socket.create_connection(("127.0.0.1", tcp_port), 5) as conn:
        conn.sendall(b"PING\n")
        conn.settimeout(5)
        assert conn.recv(64).startswith(b"PONG")


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
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`make stack` with free ports: Prometheus finds up == 1 and every queried metric.

    A metric family with samples on /metrics must be found through Prometheus'
    API. A labelled family whose feature has produced no children yet (e.g. the
    breaker gauge before any downstream call) exports only its ``# HELP`` and
    ``# TYPE`` lines and no sample, so Prometheus cannot know it: for those the
    test requires the ``# HELP`` line on /metrics, i.e. the service defines
    it. A name the service does not define at all fails either way.
    """
    require_tool("prometheus")
    ports = {
        name: free_port() for name in ("http", "tcp", "admin", "users", "orders", "prometheus")
    }
    out = tmp_path / "stack.log"
    with out.open("wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "scripts" / "stack.py"),
                "--scrape-interval",
                "1s",
                *(
                    arg
                    for name, port in ports.items()
                    if name not in ("users", "orders")
                    for arg in (f"--{name}-port", str(port))
                ),
                "--stub-port",
                f"users={ports['users']}",
                "--stub-port",
                f"orders={ports['orders']}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={k: v for k, v in os.environ.items() if not k.startswith("SERVICE_")},
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
        up = _prometheus_api(ports["prometheus"], "query", query=f'up{{job="{DNS_NAME}"}}')
        assert [r["value"][1] for r in up["result"]] == ["1"]
        assert set(health) == set(rule_exprs()), "every alert rule is loaded and evaluates"
        print("queried, not yet sampled (checked by # HELP):", sorted(queried - must_scrape))
        for name in sorted(queried - must_scrape):
            assert any(f in helped for f in _family_of(name)), (
                f"{name} is queried by the dashboard or an alert, but not exported"
            )
        # Ctrl-C stops everything; the service drains first and exits cleanly.
        proc.send_signal(signal.SIGINT)
        budget = shutdown_budget(settings_with_env(monkeypatch, {}))
        assert proc.wait(budget + 20) == 0, out.read_text()
    finally:
        stop_process(proc, 60)  # after a failed assertion: the stack, not just the script
    lines = [json.loads(ln) for ln in out.read_text().splitlines() if ln.startswith("{")]
    assert [ln["exit_code"] for ln in lines if ln.get("event") == "shutdown complete"] == [0]
    assert lines[-1] == {"event": "stack stopped", "exit_code": 0}
