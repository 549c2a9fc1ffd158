"""Loading settings: the layers, the environment check, one readable line per mistake.

:class:`RuntimeSettings` holds the runtime's sections (``service.runtime.settings``);
a service subclasses it to add its own sections, its layer of defaults and
the keys it has moved (the wiring's ``service.settings.Settings`` does).
:func:`load` builds any such class from a TOML file and the environment, or
raises :class:`ConfigError` with one line naming the setting: the CLI prints
it and exits 2, never with a traceback.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, ValidationError, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from service.runtime.errors import ConfigError
from service.runtime.settings import (
    AdminSettings,
    DownstreamSettings,
    HttpSettings,
    LogSettings,
    LoopSettings,
    MetricsSettings,
    OffloadSettings,
    PipelineSettings,
    ShutdownSettings,
    TcpSettings,
    TracingSettings,
    WorkersSettings,
)

ENV_PREFIX = "SERVICE_"
ENV_CONFIG_FILE = "SERVICE_CONFIG"
# Set by the supervisor for its workers (service.runtime.workers.link), not a setting.
ENV_WORKER = "SERVICE_WORKER"

S = TypeVar("S", bound="RuntimeSettings")


class RuntimeSettings(BaseSettings):
    """Every runtime setting, grouped by section; subclass it to add a domain's sections."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    # The lowest layer above the field defaults, as nested dicts: entries of
    # the name-keyed tables that a domain always needs (its downstreams, its
    # pipeline stages). A file or the environment adds to them key by key.
    layer_defaults: ClassVar[Mapping[str, Any]] = {}
    # Settings that moved: old dotted key -> new dotted key. The old key is
    # still accepted (and wins over the new one when both are given).
    moved: ClassVar[Mapping[str, str]] = {}

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
    tracing: TracingSettings = TracingSettings()
    workers: WorkersSettings = WorkersSettings()

    @model_validator(mode="before")
    @classmethod
    def _moved_keys(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not cls.moved:
            return data
        data = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
        for old, new in cls.moved.items():
            old_section, old_key = old.split(".", 1)
            section = data.get(old_section)
            if isinstance(section, dict) and old_key in section:
                new_section, new_key = new.split(".", 1)
                target = data.setdefault(new_section, {})
                if isinstance(target, dict):
                    target[new_key] = section.pop(old_key)
        return data

    @model_validator(mode="after")
    def _distinct_ports(self) -> RuntimeSettings:
        ports = {
            "http.port": self.http.port,
            "tcp.port": self.tcp.port,
            "admin.port": self.admin.port,
        }
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
        # Env beats the file; the file arrives as init kwargs (see load). The
        # sources are merged key by key, so a file that adds one downstream
        # keeps the ones the domain declares.
        return (env_settings, init_settings, _Defaults(settings_cls, cls.layer_defaults))


class _Defaults(PydanticBaseSettingsSource):
    def __init__(self, settings_cls: type[BaseSettings], values: Mapping[str, Any]) -> None:
        super().__init__(settings_cls)
        self._values = values

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ returns the whole layer

    def __call__(self) -> dict[str, Any]:
        return _deep_copy(self._values)


def _deep_copy(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, Mapping) else v for k, v in values.items()}


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except OSError as exc:
        raise ConfigError("config", f"cannot read {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("config", f"{path} is not valid TOML: {exc}") from None


def env_names(model: type[BaseModel], prefix: str = ENV_PREFIX) -> tuple[set[str], list[str]]:
    """The environment variable names ``model`` takes: exact names, and patterns for tables."""
    names: set[str] = set()
    patterns: list[str] = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        here = f"{prefix}{name.upper()}"
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            sub_names, sub_patterns = env_names(ann, f"{here}__")
            names |= sub_names
            patterns += sub_patterns
            if ann is DownstreamSettings:
                patterns.append(rf"{re.escape(here)}__[A-Z][A-Z0-9_]*_URL")
            elif ann is PipelineSettings:
                patterns.append(rf"{re.escape(here)}__[A-Z][A-Z0-9_]*_(WORKERS|CAPACITY)")
        elif getattr(ann, "__origin__", None) is dict:
            # A name-keyed table: <HERE>__<NAME>__<FIELD> for any entry name.
            patterns.append(rf"{re.escape(here)}__[A-Z][A-Z0-9_]*__[A-Z][A-Z0-9_]*")
        else:
            names.add(here)
    return names, patterns


def check_env(cls: type[RuntimeSettings], environ: Mapping[str, str]) -> None:
    """Reject ``SERVICE_*`` variables that name no setting (a typo would be ignored)."""
    names, patterns = env_names(cls)
    names |= {ENV_CONFIG_FILE, ENV_WORKER}
    names |= {f"{ENV_PREFIX}{old.replace('.', '__').upper()}" for old in cls.moved}
    known = re.compile("|".join(patterns)).fullmatch if patterns else None
    for key in sorted(environ):
        upper = key.upper()
        if (
            upper.startswith(ENV_PREFIX)
            and upper not in names
            and not (known is not None and known(upper))
        ):
            raise ConfigError(key, "environment variable names no setting")


def _describe(exc: ValidationError, source: str) -> ConfigError:
    parts = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"])
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown setting"
        got = err.get("input")
        suffix = "" if isinstance(got, dict) or got is None else f" (got {got!r})"
        parts.append(f"{loc or 'settings'}: {msg}{suffix}")
    return ConfigError("", f"{'; '.join(parts)} [{source}]")


def load(cls: type[S], config_file: str | os.PathLike[str] | None = None) -> S:
    """Build ``cls`` from the layers, or raise :class:`ConfigError` with one readable line."""
    path = config_file or os.environ.get(ENV_CONFIG_FILE) or None
    data = read_toml(Path(path)) if path else {}
    check_env(cls, os.environ)
    try:
        return cls(**data)
    except ValidationError as exc:
        source = f"file {path} and SERVICE_* env" if path else "SERVICE_* env"
        raise _describe(exc, source) from None
