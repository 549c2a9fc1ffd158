"""The OTEL_* variables, the sampling decision and the traceparent parser."""

from __future__ import annotations

import random

import pytest
from opentelemetry.sdk.trace.sampling import Decision, ParentBased, TraceIdRatioBased
from opentelemetry.trace import (
    NonRecordingSpan,
    SpanContext,
    TraceFlags,
    get_current_span,
    set_span_in_context,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from service.runtime.errors import ConfigError
from service.runtime.metrics import Metrics
from service.runtime.settings import TracingSettings
from service.runtime.tracing import setup
from service.runtime.tracing.config import Sampling, TraceConfig
from service.runtime.tracing.w3c import format_traceparent, parse_traceparent


def test_defaults_are_the_sdks() -> None:
    config = TraceConfig.from_env({})
    assert config.sampling == Sampling(parent_based=True, ratio=1.0)
    assert (config.exporter, config.protocol) == ("otlp", "http/protobuf")
    assert (config.max_queue, config.batch_size) == (2048, 512)
    assert (config.schedule_delay, config.export_timeout) == (5.0, 30.0)


@pytest.mark.parametrize(
    ("sampler", "arg", "expected"),
    [
        ("traceidratio", "0.25", Sampling(False, 0.25)),
        ("parentbased_traceidratio", "0.1", Sampling(True, 0.1)),
        ("always_off", "", Sampling(False, 0.0)),
        ("parentbased_always_on", "0.5", Sampling(True, 1.0)),  # the argument is not its
        ("ALWAYS_ON", "", Sampling(False, 1.0)),
    ],
)
def test_sampler_variables(sampler: str, arg: str, expected: Sampling) -> None:
    env = {"OTEL_TRACES_SAMPLER": sampler, "OTEL_TRACES_SAMPLER_ARG": arg}
    assert TraceConfig.from_env(env).sampling == expected


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"OTEL_TRACES_SAMPLER": "jaeger_remote"}, "OTEL_TRACES_SAMPLER"),
        ({"OTEL_TRACES_SAMPLER_ARG": "1.5"}, "OTEL_TRACES_SAMPLER_ARG"),
        ({"OTEL_TRACES_SAMPLER_ARG": "half"}, "OTEL_TRACES_SAMPLER_ARG"),
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, "OTEL_EXPORTER_OTLP_PROTOCOL"),
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER"),
        ({"OTEL_BSP_MAX_QUEUE_SIZE": "0"}, "OTEL_BSP_MAX_QUEUE_SIZE"),
        ({"OTEL_BSP_SCHEDULE_DELAY": "soon"}, "OTEL_BSP_SCHEDULE_DELAY"),
        ({"OTEL_BSP_MAX_QUEUE_SIZE": "10"}, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE"),
    ],
)
def test_bad_values_are_config_errors_naming_the_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError) as info:
        TraceConfig.from_env(env)
    assert info.value.setting == named


def test_setup_is_none_when_off_or_when_the_sdk_is_disabled() -> None:
    metrics = Metrics()
    assert setup(TracingSettings(), metrics, name="x", version="1", environ={}) is None
    on = TracingSettings(enabled=True)
    disabled = {"OTEL_SDK_DISABLED": "true"}
    assert setup(on, metrics, name="x", version="1", environ=disabled) is None
    with pytest.raises(ConfigError):
        setup(on, metrics, name="x", version="1", environ={"OTEL_TRACES_SAMPLER": "nope"})


@pytest.mark.parametrize("ratio", [0.0, 0.1, 0.5, 1.0])
def test_root_decision_agrees_with_the_sdks_trace_id_ratio_sampler(ratio: float) -> None:
    sampling = Sampling(True, ratio)
    sdk = TraceIdRatioBased(ratio)
    decisions = [sampling.new_trace() for _ in range(2000)]
    for trace_id, sampled in decisions:
        expected = sdk.should_sample(None, trace_id, "x").decision is Decision.RECORD_AND_SAMPLE
        assert sampled == expected
    share = sum(sampled for _, sampled in decisions) / len(decisions)
    assert abs(share - ratio) < 0.05


def test_children_follow_the_parent_or_the_trace_id() -> None:
    parent_based, by_id = Sampling(True, 0.5), Sampling(False, 0.5)
    sdk = ParentBased(TraceIdRatioBased(0.5))
    for _ in range(200):
        trace_id, flag = random.getrandbits(128), random.random() < 0.5
        parent = SpanContext(trace_id, 1, True, TraceFlags(int(flag)))
        context = set_span_in_context(NonRecordingSpan(parent))
        expected = sdk.should_sample(context, trace_id, "x").decision is Decision.RECORD_AND_SAMPLE
        assert parent_based.follows(trace_id, flag) == expected
        assert by_id.follows(trace_id, flag) == (trace_id & (2**64 - 1) < by_id.bound)


@pytest.mark.parametrize(
    "header",
    [
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00",
        " 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01 ",
        "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
        "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "00-00000000000000000000000000000000-b7ad6b7169203331-01",
        "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
        "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b716920333-01",
        "garbage",
        "",
    ],
)
def test_traceparent_parses_as_the_official_propagator_does(header: str) -> None:
    official = TraceContextTextMapPropagator().extract({"traceparent": header})
    c = get_current_span(official).get_span_context()
    expected = (c.trace_id, c.span_id, bool(c.trace_flags & 1)) if c.is_valid else None
    assert parse_traceparent(header) == expected


def test_traceparent_formats_back() -> None:
    header = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    parsed = parse_traceparent(header)
    assert parsed is not None
    assert format_traceparent(*parsed) == header
