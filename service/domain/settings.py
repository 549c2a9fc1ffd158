"""The demo domain's settings: its own sections, and what it needs from the runtime's tables.

``[events]`` and ``[hash]`` are the demo's sections. :data:`DEFAULTS` is the
domain's layer of defaults under the runtime's name-keyed tables: the two
downstreams it calls and its one pipeline stage. :data:`MOVED` keeps the
keys these settings had before they left the runtime's sections working.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field

from service.runtime.settings import PositiveInt, Section


class EventsSettings(Section):
    # Events one POST /v1/events may carry (an array or NDJSON lines).
    max_per_request: PositiveInt = 1000


class HashSettings(Section):
    # POST /v1/hash: the longest `data` (UTF-8 bytes) and scrypt's cost n (a power of two).
    max_data_bytes: PositiveInt = 65_536
    cost: Annotated[int, Field(ge=2)] = 16_384


DEFAULTS: dict[str, Any] = {
    "downstream": {
        "services": {
            "users": {"url": "http://127.0.0.1:8091"},
            "orders": {"url": "http://127.0.0.1:8092"},
        }
    },
    "pipeline": {
        "stages": {
            "enrich": {"workers": 4, "capacity": 10_000},
        }
    },
}

MOVED = {
    "http.max_events": "events.max_per_request",
    "offload.hash_max_data_bytes": "hash.max_data_bytes",
    "offload.hash_cost": "hash.cost",
}
