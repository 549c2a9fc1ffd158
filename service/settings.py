"""The service's settings: the runtime's sections plus the demo domain's.

Wiring: this is where a domain's sections join the runtime's. Replace the
domain's imports with your own; keep :func:`load_settings` as it is.
``config/default.toml`` lists every setting with the same defaults (a test
keeps the two in step).
"""

from __future__ import annotations

import os

from service.domain.settings import DEFAULTS, MOVED, EventsSettings, HashSettings
from service.runtime import config
from service.runtime.config import RuntimeSettings
from service.runtime.errors import ConfigError

__all__ = ["ConfigError", "Settings", "load_settings"]


class Settings(RuntimeSettings):
    """Every setting of the service, grouped by section."""

    layer_defaults = DEFAULTS
    moved = MOVED

    events: EventsSettings = EventsSettings()
    hash: HashSettings = HashSettings()


def load_settings(config_file: str | os.PathLike[str] | None = None) -> Settings:
    """Build the settings, or raise :class:`ConfigError` with one readable line."""
    return config.load(Settings, config_file)
