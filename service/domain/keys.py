"""The demo domain's typed ``web.AppKey``\\ s (the runtime's are in ``service.runtime.keys``)."""

from __future__ import annotations

from aiohttp import web

from service.domain.settings import EventsSettings, HashSettings

EVENTS = web.AppKey("events_settings", EventsSettings)
HASH = web.AppKey("hash_settings", HashSettings)
