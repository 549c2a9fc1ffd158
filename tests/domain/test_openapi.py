"""Contract tests: schemathesis drives the live service from config/openapi.yaml.

A real ``service serve`` process (with the two downstream stubs when they
exist, so the summary route has something to call) is fuzzed through the
document it serves at ``/openapi.json``. Every response must be documented
(status, content type, body schema, headers) and none may be a 5xx that the
document does not list. Examples are bounded so the run stays short in
``make test``; ``make fuzz`` runs the same test with many more
(``SCHEMATHESIS_MAX_EXAMPLES``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from enum import Enum
from typing import Any

import orjson
import pytest
import requests
import schemathesis
import schemathesis.config
from hypothesis import HealthCheck, given, settings

from service.app import create_app
from service.runtime.http.openapi import load_spec
from service.runtime.requestid import sane_request_id
from tests.support.process import ROOT, ServiceProcess, http_get, running_service
from tests.support.settings import make_settings

MAX_EXAMPLES = int(os.environ.get("SCHEMATHESIS_MAX_EXAMPLES", "15"))
SPEC = ROOT / "service" / "domain" / "openapi.yaml"


@schemathesis.serializer("application/x-ndjson")
def _ndjson(ctx: Any, value: Any) -> bytes:
    """One JSON document per line (schemathesis has no NDJSON serializer of its own)."""
    items = value if isinstance(value, list) else [value]
    # json, not orjson: generated data holds integers past 64 bits and lone
    # surrogates, which the service must refuse (not the client fail to send).
    return b"\n".join(json.dumps(item).encode() for item in items) + b"\n"


# Invalid input may also be refused as 413: the contract answers "too many events" so.
CONFIG = schemathesis.config.SchemathesisConfig.from_dict(
    {
        "checks": {
            "negative_data_rejection": {
                "expected-statuses": [
                    "400",
                    "401",
                    "403",
                    "404",
                    "405",
                    "406",
                    "409",
                    "413",
                    "415",
                    "422",
                    "428",
                    "429",
                    "5xx",
                ]
            }
        }
    }
)


@pytest.fixture(scope="module")
def live_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    data = tmp_path_factory.mktemp("openapi")
    env = {"SERVICE_PIPELINE__SINK_PATH": str(data / "events.jsonl")}
    with (
        running_service(["stub", "--name", "users", "--port", "0"]) as users,
        running_service(["stub", "--name", "orders", "--port", "0"]) as orders,
    ):
        env["SERVICE_DOWNSTREAM__USERS_URL"] = users.url()
        env["SERVICE_DOWNSTREAM__ORDERS_URL"] = orders.url()
        with running_service(env=env) as proc:
            yield proc


@pytest.fixture(scope="module")
def api_schema(live_service: ServiceProcess) -> Any:
    return schemathesis.openapi.from_url(live_service.url("/openapi.json"), config=CONFIG)


# One test per documented operation and generation mode (valid and invalid input).
# schemathesis' own pytest plugin (`from_fixture`) does not support pytest 9 yet,
# so the operations are listed from the YAML and driven with hypothesis directly.
def _operations() -> list[tuple[str, schemathesis.GenerationMode]]:
    """(label, mode) pairs; invalid input only where the operation has some to refuse."""
    pairs = []
    for path, item in load_spec(SPEC)["paths"].items():
        for method, op in item.items():
            pairs.append((f"{method.upper()} {path}", schemathesis.GenerationMode.POSITIVE))
            # An optional free-form header is all some routes take: no invalid input.
            if "requestBody" in op or any(
                "name" in p and p.get("in") == "path" for p in op.get("parameters", [])
            ):
                pairs.append((f"{method.upper()} {path}", schemathesis.GenerationMode.NEGATIVE))
    return pairs


@pytest.mark.parametrize(
    ("label", "mode"), _operations(), ids=lambda v: v.value if isinstance(v, Enum) else v
)
def test_api_conforms_to_its_openapi_document(
    api_schema: Any, label: str, mode: schemathesis.GenerationMode
) -> None:
    """No 500, no response outside the document, no undocumented status."""
    operation = api_schema.find_operation_by_label(label)
    assert operation is not None, label

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def check(case: Any) -> None:
        if operation.path == "/v1/events/stream":
            _check_stream_head(case)
            return
        # Every check schemathesis has (no 500, status, content type, body schema,
        # headers, bad input refused, good input accepted, 405 for other methods).
        case.call_and_validate(timeout=10)

    check()


def _check_stream_head(case: Any) -> None:
    """An endless stream: schemathesis would read it to the end, so check its head here."""
    kwargs = case.as_transport_kwargs()
    with requests.request(**kwargs, stream=True, timeout=10) as response:
        assert response.status_code in (200, 503), response.status_code
        expected = (
            "application/x-ndjson" if response.status_code == 200 else "application/problem+json"
        )
        assert response.headers["Content-Type"].startswith(expected)
        assert sane_request_id(response.headers["X-Request-ID"])


def test_served_document_is_the_yaml(live_service: ServiceProcess) -> None:
    status, headers, body = http_get(live_service.url("/openapi.json"))
    assert status == 200
    assert headers["Content-Type"].startswith("application/json")
    assert orjson.loads(body) == load_spec(SPEC)


def test_document_lists_every_public_route(live_service: ServiceProcess) -> None:
    """Every route the app has is in the document, and every documented path answers."""
    paths = set(load_spec(SPEC)["paths"])
    app = create_app(make_settings())
    routes = {route.resource.canonical for route in app.router.routes() if route.resource}
    assert routes == paths
    for path in paths:
        url = live_service.url(path.replace("{user_id}", "u1"))
        if path == "/v1/events/stream":
            continue  # endless; covered by the schemathesis run
        status, _, _ = http_get(url)
        # A missing route is a 404 from the router; a POST-only route answers 405.
        if status == 404 and path != "/v1/users/{user_id}/summary":
            pytest.fail(f"{path} is documented but the service has no such route")
