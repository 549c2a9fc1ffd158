"""The standard ``OTEL_*`` variables that configure tracing, read once and checked.

Tracing is configured the way every OpenTelemetry SDK is, so a collector or
a platform that sets these variables needs nothing service-specific:

* ``OTEL_TRACES_SAMPLER`` / ``OTEL_TRACES_SAMPLER_ARG``: ``always_on``,
  ``always_off``, ``traceidratio`` and their ``parentbased_`` forms; unset,
  ``parentbased_traceidratio`` with the ratio from the argument (default 1.0),
  which is the SDK's own default (``parentbased_always_on``) when no ratio is given;
* ``OTEL_TRACES_EXPORTER``: ``otlp`` (default) or ``none``;
* ``OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL``: ``http/protobuf`` (default) or
  ``grpc`` (which needs ``opentelemetry-exporter-otlp-proto-grpc`` installed);
  the endpoint, headers, timeout and compression variables are read by the
  exporter itself;
* ``OTEL_BSP_SCHEDULE_DELAY``, ``OTEL_BSP_MAX_QUEUE_SIZE``,
  ``OTEL_BSP_MAX_EXPORT_BATCH_SIZE``, ``OTEL_BSP_EXPORT_TIMEOUT`` (milliseconds,
  counts): the export queue (:mod:`.export`), with the SDK's defaults;
* ``OTEL_SERVICE_NAME`` / ``OTEL_RESOURCE_ATTRIBUTES``: the resource
  (:mod:`.core`; the service's own name when neither names it);
* ``OTEL_SDK_DISABLED=true`` turns tracing off whatever ``tracing.enabled`` says.

Where the SDK would log a warning and fall back to a default for a bad
value, this module raises :class:`~service.runtime.errors.ConfigError`: the
service exits 2 with one line, like for any other bad setting.

Nothing here imports OpenTelemetry: a service without the ``tracing`` extra
reads its settings, and runs with tracing off, all the same.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass

from service.runtime.errors import ConfigError

SAMPLERS = (
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
)
PROTOCOLS = ("http/protobuf", "grpc")
# The W3C trace id's lower 64 bits decide a ratio sample (the SDK's
# TraceIdRatioBased does the same), so every service with the same ratio agrees.
_LOW_BITS = (1 << 64) - 1
_getrandbits = random.getrandbits


class Sampling:
    """Which requests are recorded: the decision made before any span object exists.

    ``parent_based``: a request with a valid ``traceparent`` follows its
    sampled flag; without one (a root), ``ratio`` of requests are recorded.
    Without ``parent_based``, every request is decided by its trace id.
    """

    __slots__ = ("bound", "parent_based", "ratio")

    def __init__(self, parent_based: bool, ratio: float) -> None:
        self.parent_based = parent_based
        self.ratio = ratio
        # A trace id whose lower 64 bits are below this is sampled (TraceIdRatioBased's rule).
        self.bound = round(ratio * (1 << 64))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sampling) and (other.parent_based, other.ratio) == (
            self.parent_based,
            self.ratio,
        )

    def __hash__(self) -> int:
        return hash((self.parent_based, self.ratio))

    def __repr__(self) -> str:
        return f"Sampling(parent_based={self.parent_based}, ratio={self.ratio})"

    def new_trace(self) -> tuple[int, bool]:
        """A new trace id for a root, and whether it is sampled (its lower 64 bits decide)."""
        low = _getrandbits(64)
        return (_getrandbits(64) << 64 | low) or 1, low < self.bound

    def follows(self, trace_id: int, parent_sampled: bool) -> bool:
        """Whether a request that continues trace ``trace_id`` is sampled."""
        if self.parent_based:
            return parent_sampled
        return trace_id & _LOW_BITS < self.bound


@dataclass(frozen=True)
class TraceConfig:
    """Tracing's configuration from the environment (see the module docstring)."""

    sampling: Sampling
    exporter: str  # "otlp" or "none"
    protocol: str
    schedule_delay: float  # seconds
    max_queue: int
    batch_size: int
    export_timeout: float  # seconds

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> TraceConfig:
        def get(name: str) -> str:
            return environ.get(name, "").strip()

        sampler = get("OTEL_TRACES_SAMPLER").lower() or "parentbased_traceidratio"
        if sampler not in SAMPLERS:
            raise ConfigError("OTEL_TRACES_SAMPLER", f"is {sampler!r}, not one of {SAMPLERS}")
        ratio = 1.0
        if sampler.endswith("always_off"):
            ratio = 0.0
        elif sampler.endswith("traceidratio") and get("OTEL_TRACES_SAMPLER_ARG"):
            arg = get("OTEL_TRACES_SAMPLER_ARG")
            try:
                ratio = float(arg)
            except ValueError:
                ratio = -1.0
            if not 0.0 <= ratio <= 1.0:
                raise ConfigError("OTEL_TRACES_SAMPLER_ARG", f"is {arg!r}, not a ratio 0..1")
        exporter = get("OTEL_TRACES_EXPORTER").lower() or "otlp"
        if exporter not in ("otlp", "none"):
            raise ConfigError("OTEL_TRACES_EXPORTER", f"is {exporter!r}, not 'otlp' or 'none'")
        protocol = (
            get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            or get("OTEL_EXPORTER_OTLP_PROTOCOL")
            or "http/protobuf"
        ).lower()
        if protocol not in PROTOCOLS:
            raise ConfigError(
                "OTEL_EXPORTER_OTLP_PROTOCOL",
                f"is {protocol!r}, not one of {PROTOCOLS} (the Python exporter has no http/json)",
            )
        max_queue = _positive(environ, "OTEL_BSP_MAX_QUEUE_SIZE", 2048)
        batch_size = _positive(environ, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512)
        if batch_size > max_queue:
            raise ConfigError(
                "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", f"is {batch_size}, over the queue ({max_queue})"
            )
        return cls(
            sampling=Sampling(sampler.startswith("parentbased_"), ratio),
            exporter=exporter,
            protocol=protocol,
            schedule_delay=_positive(environ, "OTEL_BSP_SCHEDULE_DELAY", 5000) / 1000,
            max_queue=max_queue,
            batch_size=batch_size,
            export_timeout=_positive(environ, "OTEL_BSP_EXPORT_TIMEOUT", 30000) / 1000,
        )


def _positive(environ: Mapping[str, str], name: str, default: int) -> int:
    text = environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise ConfigError(name, f"is {text!r}, not a positive whole number")
    return value


def sdk_disabled(environ: Mapping[str, str]) -> bool:
    """``OTEL_SDK_DISABLED=true``: every OpenTelemetry SDK is off, this one too."""
    return environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true"
