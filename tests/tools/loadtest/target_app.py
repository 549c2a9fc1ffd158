"""A steady HTTP target for comparing the client with wrk.

    python -m tests.tools.loadtest.target_app PORT DELAY_MS [SLOW_EVERY SLOW_MS]

Every answer takes DELAY_MS (an ``asyncio.sleep``), so latency is dominated
by the server, not by whichever client is measuring: both must see the same.
With SLOW_EVERY, every SLOW_EVERY-th request (counted over all connections)
takes SLOW_MS instead: a bimodal target on which wrk's coordinated-omission
correction moves the upper percentiles far from the raw ones.
"""

from __future__ import annotations

import asyncio
import itertools
import sys

from aiohttp import web


def main() -> None:
    port, delay = int(sys.argv[1]), float(sys.argv[2]) / 1000
    slow_every = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    slow = float(sys.argv[4]) / 1000 if len(sys.argv) > 4 else 0.0
    counter = itertools.count(1)

    async def answer(request: web.Request) -> web.Response:
        pause = slow if slow_every and next(counter) % slow_every == 0 else delay
        if pause:
            await asyncio.sleep(pause)
        return web.Response(body=b'{"ok":true}', content_type="application/json")

    app = web.Application()
    app.router.add_get("/{tail:.*}", answer)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


if __name__ == "__main__":
    main()
