"""A steady HTTP target for comparing the client with wrk.

    python -m tests.loadtest.target_app PORT DELAY_MS

Every answer takes DELAY_MS (an ``asyncio.sleep``), so latency is dominated
by the server, not by whichever client is measuring: both must see the same.
"""

from __future__ import annotations

import asyncio
import sys

from aiohttp import web


def main() -> None:
    port, delay = int(sys.argv[1]), float(sys.argv[2]) / 1000

    async def answer(request: web.Request) -> web.Response:
        if delay:
            await asyncio.sleep(delay)
        return web.Response(body=b'{"ok":true}', content_type="application/json")

    app = web.Application()
    app.router.add_get("/{tail:.*}", answer)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


if __name__ == "__main__":
    main()
