"""The runtime's typed, frozen settings sections, and the loader every service uses.

A service's settings class subclasses :class:`RuntimeSettings` and adds its
own sections (the wiring's ``service.settings.Settings`` adds the demo's).
Layers, highest first: ``SERVICE_<SECTION>__<KEY>`` environment variables,
the file given by ``--config`` or ``SERVICE_CONFIG``, the class's
:attr:`RuntimeSettings.layer_defaults` (e.g. the downstreams and pipeline
stages a domain declares), then the field defaults below. Nothing else reads
the environment; settings are validated once at start-up and passed down.

Two tables take entries by name: ``[downstream.services.<name>]`` and
``[pipeline.stages.<name>]``. Their short forms, ``downstream.<name>_url``
and ``pipeline.<name>_workers`` / ``pipeline.<name>_capacity``, stay valid
(deployments set them as ``SERVICE_DOWNSTREAM__USERS_URL``); when a setting
is given both ways, the short form wins.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from service.runtime.errors import ConfigError

Port = Annotated[int, Field(ge=0, le=65535)]
PositiveFloat = Annotated[float, Field(gt=0)]
NonNegativeFloat = Annotated[float, Field(ge=0)]
PositiveInt = Annotated[int, Field(ge=1)]

# Names of table entries: they become metric labels and parts of env variable names.
NAME = re.compile(r"[a-z][a-z0-9_]{0,39}")


class Section(BaseModel):
    # Unknown keys are errors (a typo must not silently fall back to a default).
    model_config = ConfigDict(extra="forbid", frozen=True)


class HttpSettings(Section):
    host: str = "0.0.0.0"
    port: Port = 8080
    backlog: PositiveInt = 1024
    max_body_bytes: PositiveInt = 1_048_576
    header_timeout: PositiveFloat = 10.0
    # From a request's headers to the last byte of its body (answered 408 past it).
    body_timeout: PositiveFloat = 30.0
    keepalive_timeout: PositiveFloat = 75.0
    # Open connections at most; past it a new one is answered 503 at once and closed.
    max_connections: PositiveInt = 10_000
    # Read aiohttp's private request fields where this aiohttp version has them
    # (service.runtime.http.compat); false forces the public API everywhere.
    fast_path: bool = True


class TcpSettings(Section):
    host: str = "0.0.0.0"
    port: Port = 8888
    backlog: PositiveInt = 1024
    max_line_bytes: Annotated[int, Field(ge=64)] = 65_536
    max_connections: PositiveInt = 10_000
    idle_timeout: PositiveFloat = 300.0
    write_timeout: PositiveFloat = 10.0
    overload_timeout: PositiveFloat = 5.0


class AdminSettings(Section):
    # Loopback by default: metrics and task dumps are not for the public.
    # The container sets SERVICE_ADMIN__HOST=0.0.0.0 for Prometheus to reach it.
    host: str = "127.0.0.1"
    port: Port = 8081
    debug: bool = False


class LogSettings(Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    # auto: console renderer on a TTY, JSON lines otherwise.
    format: Literal["auto", "json", "console"] = "auto"
    access_log: bool = True
    # Fraction of successful requests that get an access line; errors (>= 400)
    # and slow requests are always logged.
    access_log_sample: Annotated[float, Field(ge=0, le=1)] = 1.0
    # Lines are buffered and written at most this often (and at once for
    # warnings and errors, and at exit).
    flush_interval: NonNegativeFloat = 0.1
    # A thread writes them, from a buffer of at most this many bytes: when
    # stdout does not keep up, what does not fit is dropped (and counted),
    # never waited for.
    buffer_bytes: PositiveInt = 1_048_576
    # At exit, how long that thread may take to write what is left.
    exit_flush_seconds: NonNegativeFloat = 1.0


class MetricsSettings(Section):
    namespace: Annotated[str, Field(pattern=r"^[a-zA-Z_][a-zA-Z0-9_]*$")] = "service"
    loop_lag_interval: PositiveFloat = 0.1


class LoopSettings(Section):
    kind: Literal["uvloop", "asyncio"] = "uvloop"
    debug: bool = False
    slow_callback_ms: PositiveFloat = 100.0
    # The watchdog thread logs the loop's stack when it has not run for this
    # long (0: no watchdog).
    stall_seconds: NonNegativeFloat = 1.0


class ShutdownSettings(Section):
    # Step 1: keep serving this long after /readyz turns 503 (k8s endpoints lag).
    readiness_delay: NonNegativeFloat = 0.0
    # Step 3: in-flight HTTP requests and TCP answers.
    grace_seconds: PositiveFloat = 10.0
    # Step 4: the pipeline drain.
    drain_seconds: PositiveFloat = 10.0
    # Step 5: cancelled tasks' cleanup and closing resources, each.
    cancel_seconds: PositiveFloat = 2.0


def _short_forms(data: Any, table: str, suffixes: tuple[str, ...], fields: dict[str, Any]) -> Any:
    """Move ``<name>_<suffix>`` keys into ``<table>.<name>.<suffix>`` (the short form wins)."""
    if not isinstance(data, dict):
        return data
    data = dict(data)
    for key in [k for k in data if k not in fields]:
        for suffix in suffixes:
            name = key.removesuffix(f"_{suffix}")
            if name != key and NAME.fullmatch(name):
                entries = dict(data.get(table) or {})
                entry = entries.get(name)
                entry = (
                    entry.model_dump(exclude_unset=True)
                    if isinstance(entry, BaseModel)
                    else dict(entry or {})
                )
                entries[name] = {**entry, suffix: data.pop(key)}
                data[table] = entries
                break
    return data


def _check_names(entries: dict[str, Any], table: str) -> dict[str, Any]:
    for name in entries:
        if not NAME.fullmatch(name):
            raise ValueError(
                f"{table}.{name}: names are lower case letters, digits and "
                "underscores, starting with a letter"
            )
    return entries


class StageSettings(Section):
    """One pipeline stage: how many workers run it, how many items may wait behind it."""

    workers: PositiveInt = 1
    capacity: PositiveInt = 10_000


class PipelineSettings(Section):
    sink: Literal["file", "redis"] = "file"
    sink_path: Path = Path("data/events.jsonl")
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_stream: str = "events"
    redis_maxlen: Annotated[int, Field(ge=0)] = 0
    ingest_capacity: PositiveInt = 10_000
    batch_size: PositiveInt = 4096
    flush_interval: PositiveFloat = 0.05
    subscriber_buffer: PositiveInt = 1000
    stages: dict[str, StageSettings] = {}

    @model_validator(mode="before")
    @classmethod
    def _stage_short_forms(cls, data: Any) -> Any:
        return _short_forms(data, "stages", ("workers", "capacity"), cls.model_fields)

    @field_validator("stages")
    @classmethod
    def _stage_names(cls, stages: dict[str, StageSettings]) -> dict[str, StageSettings]:
        return _check_names(stages, "pipeline.stages")

    def stage(self, name: str) -> StageSettings:
        """The settings of stage ``name``; the defaults when it has no entry."""
        return self.stages.get(name) or StageSettings()


class DownstreamPolicy(Section):
    """How calls to a downstream behave: shared by all, overridable per service."""

    deadline_seconds: PositiveFloat = 2.0
    connect_timeout: PositiveFloat = 1.0
    # An asyncio service holds thousands of waiting calls for little memory:
    # the connection pool and the bulkhead are sized for that, and alike, so a
    # call that holds a bulkhead slot never waits again for a connection.
    pool_size: PositiveInt = 1000
    max_response_bytes: PositiveInt = 1_048_576
    retry_attempts: Annotated[int, Field(ge=1, le=3)] = 3
    retry_budget_ratio: Annotated[float, Field(ge=0, le=1)] = 0.1
    # Full-jitter backoff: retry n sleeps uniform(0, min(max, base * 2**(n-1))).
    retry_backoff_seconds: NonNegativeFloat = 0.025
    retry_backoff_max_seconds: NonNegativeFloat = 0.25
    breaker_failures: PositiveInt = 5
    breaker_reset_seconds: PositiveFloat = 5.0
    # Calls in flight at once; past it a call waits while its deadline allows a call.
    bulkhead: PositiveInt = 1000
    cache_ttl_seconds: NonNegativeFloat = 30.0
    cache_size: PositiveInt = 10_000


class DownstreamService(DownstreamPolicy):
    """One ``[downstream.services.<name>]`` entry: its URL and what it overrides."""

    url: str


class DownstreamSettings(DownstreamPolicy):
    services: dict[str, DownstreamService] = {}

    @model_validator(mode="before")
    @classmethod
    def _url_short_forms(cls, data: Any) -> Any:
        return _short_forms(data, "services", ("url",), cls.model_fields)

    @field_validator("services")
    @classmethod
    def _service_names(cls, services: dict[str, DownstreamService]) -> dict[str, DownstreamService]:
        return _check_names(services, "downstream.services")

    def service(self, name: str) -> DownstreamService:
        """Entry ``name`` with every setting it does not give taken from the shared ones."""
        entry = self.services.get(name)
        if entry is None:
            raise ConfigError(f"downstream.services.{name}", "is not configured (no url)")
        shared = self.model_dump(exclude={"services"})
        return DownstreamService(**{**shared, **entry.model_dump(include=entry.model_fields_set)})


class TracingSettings(Section):
    # OpenTelemetry tracing (service.runtime.tracing), off by default; the
    # exporter, sampler and batching come from the standard OTEL_* variables.
    enabled: bool = False


class WorkersSettings(Section):
    # Processes: 1 runs the service in this process, with no supervisor; N > 1 a
    # supervisor and N workers on the same ports; 0 one per usable CPU (affinity
    # and a cgroup CPU quota count). `service serve --workers N` overrides it.
    count: Annotated[int, Field(ge=0)] = 1
    # A worker that exits on its own starts again after backoff_seconds, doubled
    # for each failure in a row; one that lived stable_seconds starts the count
    # afresh; crash_limit failures in a row make the supervisor exit 1.
    backoff_seconds: NonNegativeFloat = 0.1
    stable_seconds: PositiveFloat = 10.0
    crash_limit: PositiveInt = 3


class OffloadSettings(Section):
    io_workers: PositiveInt = 8
    cpu_kind: Literal["thread", "process"] = "thread"
    cpu_workers: PositiveInt = 2
    max_queued: PositiveInt = 64


# The settings class itself, and how it is loaded, are in service.runtime.config.
__all__ = [
    "AdminSettings",
    "DownstreamPolicy",
    "DownstreamService",
    "DownstreamSettings",
    "HttpSettings",
    "LogSettings",
    "LoopSettings",
    "MetricsSettings",
    "OffloadSettings",
    "PipelineSettings",
    "Section",
    "ShutdownSettings",
    "StageSettings",
    "TcpSettings",
    "TracingSettings",
    "WorkersSettings",
]
