"""The Redis Streams sink: delivered events shared by every replica, in one stream.

Each batch becomes one ``EVALSHA`` of :data:`_APPEND`, a Lua script that
``XADD``\\ s every event of the batch (fields ``id`` and ``event``, the latter
the same JSON object as a line of the file sink) and then trims the stream
(``MAXLEN ~``) when ``pipeline.redis_maxlen`` is set. Why a script and not
``MULTI``/``XADD``.../``EXEC``: both are all-or-nothing, but only a script can
also make a *retry* of the batch idempotent, which is what "every
acknowledged event exactly once" needs.

The ambiguous failure. The pipeline retries a batch whose ``write_batch``
raised. A timeout or a dropped connection after Redis ran the batch but
before its reply arrived would then write the batch twice, and stream entry
ids cannot help (``*`` ids are new on every ``XADD``; explicit ids must grow
across all writers of the stream, which independent replicas cannot
arrange). So every sink instance (one per process) is a *writer* with a
random token and numbers its batches 1, 2, 3...; the script keeps the
writer's last applied number in the key ``<stream>:writer:<token>`` and skips
a batch whose number is not above it. A retry reuses the failed attempt's
number, so the batch lands once whether the earlier attempt ran or not, and
even if the earlier attempt is still queued in Redis behind the retry. The
key costs one small string per process and expires a day after its last
write. Consumers may still de-duplicate on the ``id`` field (MAXLEN trimming
or a failover to a replica that had not received the last writes are
outside what this sink can see).

Atomicity. Redis runs a script without interleaving other commands, records
its effects in the append-only file as one ``MULTI``/``EXEC``, and refuses
the first write of a script when over ``maxmemory`` (later writes of a
script that has started are allowed), so a batch is never half-stored;
errors such as ``WRONGTYPE`` happen on the first ``XADD``.

Durability is Redis's: ``appendonly yes`` with ``appendfsync always`` (the
compose file) matches the file sink's fsync per batch; ``everysec`` trades
up to a second of events on a Redis host crash for throughput.

Failures. One attempt per ``write_batch``, bounded by
:data:`WRITE_TIMEOUT` (redis-py retries once at once, for a pooled connection
that a Redis restart closed; harmless, the script is idempotent): the
pipeline owns the retry loop (backoff 50 ms doubling to 2 s, the batch kept in memory,
queues filling behind it until intake answers 429 / TCP stops reading).
:attr:`RedisSink.healthy` is false from a failed write until the next good
one, and while a one-second ``PING`` probe fails, so ``/readyz`` turns 503
while Redis cannot be written even when no batch is pending.

Why no redis-py ``socket_timeout``: with one, redis-py sends every command
through ``asyncio.wait_for``, which on Python 3.11 runs the send in a new
task, so the batch's bytes reach the socket only one loop iteration after
``write_batch`` starts. Under load that iteration is long: taking a batch
frees room in the enrich queue, and the enrich workers then refill it
without yielding. Measured in bench_redis (HTTP): with the timeout, 21-25 ms
of a 60-70 ms batch passed before the send began (2.4 ms without it), and the
rate was 53-64k events/s against 70-71k without it. :data:`WRITE_TIMEOUT` still bounds
every attempt (``asyncio.timeout`` around the call; redis-py drops a
connection whose read or write was cancelled, so no stale reply is left).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript

from service.runtime.log import get_logger
from service.runtime.pipeline.sinks.base import SinkLine

log = get_logger("service.sinks.redis")

# One attempt's bound: a Redis that is slow beyond it counts as failing (the
# retry is idempotent, see the module docstring).
WRITE_TIMEOUT = 5.0
CONNECT_TIMEOUT = 2.0
PROBE_INTERVAL = 1.0
WRITER_KEY_TTL = 24 * 3600

# KEYS[1] the stream, KEYS[2] this writer's last applied batch number.
# ARGV[1] this batch's number, ARGV[2] TTL of KEYS[2] in seconds, ARGV[3]
# MAXLEN (0: no trimming), ARGV[4] the ids and ARGV[5] the events, each
# joined by newlines (neither ever contains one: a sink line is one JSON line).
# Two joined strings instead of two arguments per event: redis-py packs every
# argument in Python, which cost about 3 us per event on the event loop.
_APPEND = """
local seq = tonumber(ARGV[1])
local last = tonumber(redis.call('GET', KEYS[2]) or '0')
if seq <= last then
  return -1
end
local stream, ids, events = KEYS[1], ARGV[4], ARGV[5]
local find, sub = string.find, string.sub
local i, e, n = 1, 1, 0
local ids_end, events_end = #ids + 1, #events + 1
while i < ids_end do
  local i2 = find(ids, '\\n', i, true) or ids_end
  local e2 = find(events, '\\n', e, true) or events_end
  redis.call('XADD', stream, '*', 'id', sub(ids, i, i2 - 1), 'event', sub(events, e, e2 - 1))
  i, e, n = i2 + 1, e2 + 1, n + 1
end
local maxlen = tonumber(ARGV[3])
if maxlen > 0 then
  redis.call('XTRIM', stream, 'MAXLEN', '~', maxlen)
end
redis.call('SET', KEYS[2], ARGV[1], 'EX', ARGV[2])
return n
"""


class RedisSink:
    """Batches appended to one Redis stream, each exactly once (see the module docstring)."""

    backend = "redis"

    def __init__(
        self,
        url: str,
        stream: str,
        maxlen: int = 0,
        *,
        write_timeout: float = WRITE_TIMEOUT,
        probe_interval: float = PROBE_INTERVAL,
    ) -> None:
        self.url = url
        self.stream = stream
        self.maxlen = maxlen
        self.write_timeout = write_timeout
        self.probe_interval = probe_interval
        self.writer = os.urandom(8).hex()
        self.writer_key = f"{stream}:writer:{self.writer}"
        self._client: aioredis.Redis | None = None
        self._script: AsyncScript | None = None
        self._seq = 0  # the number of the last batch attempted
        self._pending: tuple[str, int] | None = None  # (first id, size) of a failed batch
        self._write_ok = True
        self._probe_ok = True
        self._probe: asyncio.Task[None] | None = None
        self.replayed = 0  # retried batches that Redis had already applied

    @property
    def healthy(self) -> bool:
        return self._write_ok and self._probe_ok

    async def open(self) -> None:
        # One immediate retry inside redis-py (a stale pooled connection after a
        # Redis restart); backoff and persistence are the pipeline's retry loop.
        # No socket_timeout: asyncio.timeout bounds each call instead (see the
        # module docstring: redis-py's would delay every send by a loop iteration).
        client = aioredis.Redis.from_url(
            self.url,
            socket_timeout=None,
            socket_connect_timeout=CONNECT_TIMEOUT,
            retry=Retry(NoBackoff(), 1),
            client_name=f"service-sink-{self.writer}",
        )
        self._client = client
        self._script = client.register_script(_APPEND)
        # Start even when Redis is down (not ready until it answers): replicas
        # must not crash-loop over a Redis restart.
        await self._check()
        if not self._probe_ok:
            log.warning("redis sink: redis is not reachable yet", url=_safe_url(self.url))
        self._probe = asyncio.create_task(self._probe_loop(), name="pipeline:sink-probe")

    async def write_batch(self, lines: Sequence[SinkLine]) -> None:
        script = self._script
        if script is None:
            raise RuntimeError("redis sink is not open")
        if not lines:
            return
        key = (lines[0][0], len(lines))
        if self._pending != key:
            # A new batch. (After a failure the pipeline retries the same batch,
            # which keeps the failed attempt's number: see the module docstring.)
            self._seq += 1
            self._pending = key
        ids = "\n".join([event_id for event_id, _ in lines])
        events = b"\n".join([data for _, data in lines])
        if events.count(b"\n") != len(lines) - 1:  # one memchr pass: cheap insurance
            raise ValueError("a sink line contains a newline: not one JSON line")
        args: list[Any] = [self._seq, WRITER_KEY_TTL, self.maxlen, ids, events]
        try:
            async with asyncio.timeout(self.write_timeout):
                stored = await script(keys=[self.stream, self.writer_key], args=args)
        except Exception:
            self._write_ok = False
            raise
        self._pending = None
        self._write_ok = True
        if stored == -1:
            self.replayed += 1
            log.info(
                "redis sink: a retried batch had already been stored",
                batch=self._seq,
                events=len(lines),
            )

    async def flush(self) -> None:
        """Nothing to do: Redis's ``appendfsync`` decides when a reply means on disk."""

    async def close(self) -> None:
        probe, self._probe = self._probe, None
        if probe is not None and not probe.done():
            probe.cancel()
            await asyncio.wait([probe])
        client, self._client = self._client, None
        self._script = None
        if client is not None:
            await client.aclose()

    async def _check(self) -> None:
        client = self._client
        if client is None:
            return
        try:
            async with asyncio.timeout(self.write_timeout):
                await client.ping()
        except Exception as exc:  # CancelledError is not an Exception
            if self._probe_ok:
                log.warning("redis sink: ping failed", error=f"{type(exc).__name__}: {exc}")
            self._probe_ok = False
        else:
            if not self._probe_ok:
                log.info("redis sink: redis answers again")
            self._probe_ok = True

    async def _probe_loop(self) -> None:
        while True:
            await asyncio.sleep(self.probe_interval)
            await self._check()


def _safe_url(url: str) -> str:
    """The URL without a password, for logs."""
    scheme, sep, rest = url.partition("://")
    _userinfo, at, host = rest.rpartition("@")
    return f"{scheme}{sep}{'***@' if at else ''}{host}" if sep else url
