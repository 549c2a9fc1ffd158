"""deploy/k8s/: offline schema validation and the pod's probes, security and grace."""

from __future__ import annotations

import kubernetes_validate
import pytest

from service.cli import build_parser
from service.runtime.tracing import TraceConfig
from tests.deploy.artifacts import (
    DNS_1123_LABEL,
    SHUTDOWN_MARGIN,
    dockerfile_env,
    final_stage,
    instruction,
    k8s_documents,
    k8s_kind,
    settings_with_env,
    shutdown_budget,
)


def test_k8s_manifests_validate_offline() -> None:
    docs = k8s_documents()
    assert {d["kind"] for d in docs} >= {
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
    }
    for doc in docs:
        kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)
        # Object names are DNS-1123 names; the schema does not say so, the API server does.
        assert DNS_1123_LABEL.fullmatch(doc["metadata"]["name"]), doc["metadata"]["name"]
    for container in k8s_kind("Deployment")["spec"]["template"]["spec"]["containers"]:
        assert DNS_1123_LABEL.fullmatch(container["name"]), container["name"]
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
    assert pod["securityContext"]["runAsUser"] == int(
        instruction(final_stage(), "USER").split(":")[0]
    )
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
    settings = settings_with_env(
        monkeypatch, {**dockerfile_env(final_stage()), **configmap["data"]}
    )
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


def test_k8s_configmap_tracing_variables_are_valid() -> None:
    data = k8s_kind("ConfigMap")["data"]
    assert data["SERVICE_TRACING__ENABLED"] == "false"
    otel = {key: value for key, value in data.items() if key.startswith("OTEL_")}
    config = TraceConfig.from_env(otel)  # what the service reads when tracing is on
    assert (config.sampling.parent_based, config.sampling.ratio) == (True, 0.1)
    assert (config.protocol, config.max_queue) == ("http/protobuf", 2048)
