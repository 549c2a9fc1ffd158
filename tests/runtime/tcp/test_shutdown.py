"""SIGTERM with 100 idle and 20 busy TCP clients, against a real service process.

Every line the server read is answered (in order), every client sees
``BYE shutdown`` and then the end of the stream, and the service exits 0
well within the grace period. The service runs on the same loop as the test.
"""

from __future__ import annotations

import asyncio
import collections
import signal
import time
from pathlib import Path

import pytest

from tests.support.process import running_service

EVENT = b'{"user_id": "u1", "type": "click"}\n'
GRACE = 10.0


async def idle_client(port: int) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        return await reader.read()
    finally:
        writer.close()


async def busy_client(port: int, started: asyncio.Event) -> tuple[int, str]:
    """Send PINGs and events, pipelined; check each answer against what was sent."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    sent: collections.deque[bytes] = collections.deque()
    answered = 0
    bye = asyncio.Event()

    async def send() -> None:
        while not bye.is_set():
            if len(sent) < 100:
                batch = [b"PING\n" if i % 2 else EVENT for i in range(20)]
                sent.extend(batch)
                writer.write(b"".join(batch))
                try:
                    await writer.drain()
                except ConnectionError:
                    return  # the server is gone; the reader says whether that was clean
            await asyncio.sleep(0.001)

    sender = asyncio.create_task(send())
    try:
        while True:
            line = await reader.readline()
            if line == b"BYE shutdown\n":
                bye.set()
                rest = await reader.read()
                return answered, f"bye, then {rest!r}"
            if not line:
                return answered, "closed without BYE"
            expected = sent.popleft()
            ok = line == b"PONG\n" if expected == b"PING\n" else line.startswith(b"OK ")
            if not ok:
                return answered, f"answer {line!r} to {expected!r}"
            answered += 1
            if answered == 50:
                started.set()
    finally:
        bye.set()
        await sender
        writer.close()


@pytest.mark.slow
@pytest.mark.asyncio
async def test_sigterm_answers_busy_clients_says_bye_to_all_and_exits_0(tmp_path: Path) -> None:
    loop_kind = "uvloop" if "uvloop" in type(asyncio.get_running_loop()).__module__ else "asyncio"
    env = {
        "SERVICE_LOOP__KIND": loop_kind,
        "SERVICE_SHUTDOWN__GRACE_SECONDS": str(GRACE),
        "SERVICE_PIPELINE__SINK_PATH": str(tmp_path / "events.jsonl"),
        "SERVICE_LOG__LEVEL": "info",
    }
    with running_service(env=env) as proc:
        port = proc.ports["tcp"]
        async with asyncio.timeout(30):
            idle = [asyncio.create_task(idle_client(port)) for _ in range(100)]
            flags = [asyncio.Event() for _ in range(20)]
            busy = [asyncio.create_task(busy_client(port, flag)) for flag in flags]
            for flag in flags:  # every busy client is mid-conversation
                await flag.wait()
            proc.signal(signal.SIGTERM)
            signalled = time.monotonic()
            idle_results = await asyncio.gather(*idle)
            busy_results = await asyncio.gather(*busy)
        code = await asyncio.to_thread(proc.wait, 30)
        elapsed = time.monotonic() - signalled

    assert idle_results == [b"BYE shutdown\n"] * 100
    assert [why for _, why in busy_results] == ["bye, then b''"] * 20, busy_results
    assert all(n >= 50 for n, _ in busy_results)
    assert code == 0, proc.output()[-3000:]
    assert elapsed < GRACE / 2, elapsed
    (closed,) = proc.events("tcp clients closed")
    assert closed["cut"] == 0
    assert closed["unanswered"] == 0
    assert proc.events("shutdown complete")[0]["exit_code"] == 0
