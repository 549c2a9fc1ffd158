"""Typed, frozen settings: embedded defaults, a TOML file on top, env on top of that.

Order of precedence (highest first): ``SERVICE_<SECTION>__<KEY>`` environment
variables, the file given by ``--config`` or ``SERVICE_CONFIG``, the defaults
below. ``config/default.toml`` lists every setting with the same defaults (a
test keeps the two in step). Nothing else in the service reads the
environment; settings are validated once at start-up and passed down.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from service.errors import ConfigError

__all__ = ["ConfigError", "Settings", "load_settings"]

ENV_PREFIX = "SERVICE_"
ENV_CONFIG_FILE = "SERVICE_CONFIG"

Port = Annotated[int, Field(ge=0, le=65535)]
PositiveFloat = Annotated[float, Field(gt=0)]
NonNegativeFloat = Annotated[float, Field(ge=0)]
PositiveInt = Annotated[int, Field(ge=1)]


class Section(BaseModel):
    # Unknown keys are errors (a typo must not silently fall back to a default).
    model_config = ConfigDict(extra="forbid", frozen=True)


class HttpSettings(Section):
    host: str = "0.0.0.0"
    port: Port = 8080
    backlog: PositiveInt = 1024
    max_body_bytes: PositiveInt = 1_048_576
    max_events: PositiveInt = 1000
    header_timeout: PositiveFloat = 10.0
    keepalive_timeout: PositiveFloat = 75.0


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


class MetricsSettings(Section):
    namespace: Annotated[str, Field(pattern=r"^[a-zA-Z_][a-zA-Z0-9_]*$")] = "service"
    loop_lag_interval: PositiveFloat = 0.1


class LoopSettings(Section):
    kind: Literal["uvloop", "asyncio"] = "uvloop"
    debug: bool = False
    slow_callback_ms: PositiveFloat = 100.0


class ShutdownSettings(Section):
    # Step 1: keep serving this long after /readyz turns 503 (k8s endpoints lag).
    readiness_delay: NonNegativeFloat = 0.0
    # Step 3: in-flight HTTP requests and TCP answers.
    grace_seconds: PositiveFloat = 10.0
    # Step 4: the pipeline drain.
    drain_seconds: PositiveFloat = 10.0
    # Step 5: cancelled tasks' cleanup and closing resources, each.
    cancel_seconds: PositiveFloat = 2.0


class PipelineSettings(Section):
    sink: Literal["file", "redis"] = "file"
    sink_path: Path = Path("data/events.jsonl")
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_stream: str = "events"
    redis_maxlen: Annotated[int, Field(ge=0)] = 0
    ingest_capacity: PositiveInt = 10_000
    enrich_capacity: PositiveInt = 10_000
    enrich_workers: PositiveInt = 4
    batch_size: PositiveInt = 4096
    flush_interval: PositiveFloat = 0.05
    subscriber_buffer: PositiveInt = 1000


class DownstreamSettings(Section):
    users_url: str = "http://127.0.0.1:8091"
    orders_url: str = "http://127.0.0.1:8092"
    deadline_seconds: PositiveFloat = 2.0
    connect_timeout: PositiveFloat = 1.0
    pool_size: PositiveInt = 100
    max_response_bytes: PositiveInt = 1_048_576
    retry_attempts: Annotated[int, Field(ge=1, le=3)] = 3
    retry_budget_ratio: Annotated[float, Field(ge=0, le=1)] = 0.1
    # Full-jitter backoff: retry n sleeps uniform(0, min(max, base * 2**(n-1))).
    retry_backoff_seconds: NonNegativeFloat = 0.025
    retry_backoff_max_seconds: NonNegativeFloat = 0.25
    breaker_failures: PositiveInt = 5
    breaker_reset_seconds: PositiveFloat = 5.0
    bulkhead: PositiveInt = 64
    cache_ttl_seconds: NonNegativeFloat = 30.0
    cache_size: PositiveInt = 10_000


class OffloadSettings(Section):
    io_workers: PositiveInt = 8
    cpu_kind: Literal["thread", "process"] = "thread"
    cpu_workers: PositiveInt = 2
    max_queued: PositiveInt = 64
    hash_max_data_bytes: PositiveInt = 65_536
    hash_cost: Annotated[int, Field(ge=2)] = 16_384


class Settings(BaseSettings):
    """Every setting of the service, grouped by section."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    http: HttpSettings = HttpSettings()
    tcp: TcpSettings = TcpSettings()
    admin: AdminSettings = AdminSettings()
    log: LogSettings = LogSettings()
    metrics: MetricsSettings = MetricsSettings()
    loop: LoopSettings = LoopSettings()
    shutdown: ShutdownSettings = ShutdownSettings()
    pipeline: PipelineSettings = PipelineSettings()
    downstream: DownstreamSettings = DownstreamSettings()
    offload: OffloadSettings = OffloadSettings()

    @model_validator(mode="after")
    def _distinct_ports(self) -> Settings:
        ports = {"http.port": self.http.port, "tcp.port": self.tcp.port,
                 "admin.port": self.admin.port}
        seen: dict[int, str] = {}
        for name, port in ports.items():
            if port and port in seen:
                raise ValueError(f"{name} and {seen[port]} are both {port}")
            seen[port] = name
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Env beats the file; the file arrives as init kwargs (see load_settings).
        return (env_settings, init_settings)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except OSError as exc:
        raise ConfigError("config", f"cannot read {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("config", f"{path} is not valid TOML: {exc}") from None


def _known_env_names(model: type[BaseModel], prefix: str) -> set[str]:
    names = set()
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            names |= _known_env_names(ann, f"{prefix}{name.upper()}__")
        else:
            names.add(f"{prefix}{name.upper()}")
    return names


def _check_env(environ: Mapping[str, str]) -> None:
    """Reject ``SERVICE_*`` variables that name no setting (a typo would be ignored)."""
    known = _known_env_names(Settings, ENV_PREFIX) | {ENV_CONFIG_FILE}
    for key in sorted(environ):
        if key.upper().startswith(ENV_PREFIX) and key.upper() not in known:
            raise ConfigError(key, "environment variable names no setting")


def _describe(exc: ValidationError, source: str) -> ConfigError:
    parts = []
    setting = ""
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"])
        setting = setting or loc
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown setting"
        got = err.get("input")
        suffix = "" if isinstance(got, dict) or got is None else f" (got {got!r})"
        parts.append(f"{loc or 'settings'}: {msg}{suffix}")
    return ConfigError("", f"{'; '.join(parts)} [{source}]")


def load_settings(config_file: str | os.PathLike[str] | None = None) -> Settings:
    """Build the settings, or raise :class:`ConfigError` with one readable line."""
    path = config_file or os.environ.get(ENV_CONFIG_FILE) or None
    data = _read_toml(Path(path)) if path else {}
    _check_env(os.environ)
    try:
        return Settings(**data)
    except ValidationError as exc:
        source = f"file {path} and SERVICE_* env" if path else "SERVICE_* env"
        raise _describe(exc, source) from None
