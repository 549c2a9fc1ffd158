"""``GET /openapi.json``: a service's OpenAPI description, served from a YAML file.

The source of truth is a YAML document that ships inside the package (the
demo's is ``service/domain/openapi.yaml``), readable, commented and reviewed
with the routes it describes; the container image, which installs only the
package, serves it too. It is parsed and encoded once at start-up, so a
broken document fails the start rather than the first request, and the route
costs one ``bytes`` write per call.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import yaml
from aiohttp import web


def load_spec(path: Path) -> dict[str, Any]:
    """The document as a dict; ``safe_load`` so the YAML cannot build objects."""
    with path.open("rb") as f:
        doc = yaml.safe_load(f)
    if not isinstance(doc, dict) or "openapi" not in doc:
        raise ValueError(f"{path}: not an OpenAPI document")
    return doc


def setup(app: web.Application, path: Path) -> None:
    body = orjson.dumps(load_spec(path))

    async def openapi(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json")

    app.router.add_get("/openapi.json", openapi, allow_head=False)
