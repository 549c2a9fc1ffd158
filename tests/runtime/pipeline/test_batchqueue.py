"""BatchQueue: bounded in items, batches merged or split on get, waiters never stranded."""

from __future__ import annotations

import asyncio

import pytest

from service.runtime.pipeline.batchqueue import STOP, BatchQueue


@pytest.mark.asyncio
async def test_get_merges_small_batches_and_splits_large_ones() -> None:
    q: BatchQueue[int] = BatchQueue(100)
    q.put_nowait([1, 2])
    q.put_nowait([3])
    q.put_nowait([4, 5, 6, 7, 8])
    assert q.qsize() == 8
    assert await q.get(4) == [1, 2, 3]  # [4..8] would go over the limit
    assert q.get_nowait(2) == [4, 5]
    assert q.get_nowait(10) == [6, 7, 8]
    assert q.qsize() == 0
    with pytest.raises(asyncio.QueueEmpty):
        q.get_nowait(1)


@pytest.mark.asyncio
async def test_the_stop_marker_is_never_merged() -> None:
    q: BatchQueue[int] = BatchQueue(10)
    q.put_nowait([1])
    q.put_nowait(STOP)
    q.put_nowait([2])
    assert q.get_nowait(10) == [1]
    assert q.get_nowait(10) is STOP
    assert q.get_nowait(10) == [2]


@pytest.mark.asyncio
async def test_put_waits_for_room_counted_in_items() -> None:
    q: BatchQueue[int] = BatchQueue(4)
    await q.put([1, 2, 3])
    assert q.room() == 1
    waiting = asyncio.create_task(q.put([4, 5]))
    await asyncio.sleep(0.01)
    assert not waiting.done()
    assert q.get_nowait(1) == [1]
    await asyncio.wait_for(waiting, 1)
    assert q.qsize() == 4
    # A batch larger than the capacity gets in when the queue is empty.
    q.get_nowait(10)
    await asyncio.wait_for(q.put(list(range(9))), 1)
    assert q.qsize() == 9


@pytest.mark.asyncio
async def test_every_waiter_that_fits_is_woken_when_room_appears() -> None:
    """Many single-item waiters (TCP clients) and one get that frees many slots."""
    q: BatchQueue[int] = BatchQueue(50)
    q.put_nowait(list(range(50)))

    async def offer(i: int) -> None:
        while q.full():
            await q.wait_for_room()
        q.put_nowait([i])

    waiters = [asyncio.create_task(offer(i)) for i in range(30)]
    await asyncio.sleep(0.01)
    assert q.get_nowait(50) == list(range(50))
    await asyncio.wait_for(asyncio.gather(*waiters), 1)
    assert q.qsize() == 30


@pytest.mark.asyncio
async def test_cancelled_waiters_leave_no_trace_and_wake_all_releases_the_rest() -> None:
    q: BatchQueue[int] = BatchQueue(1)
    q.put_nowait([0])
    cancelled = asyncio.create_task(q.wait_for_room())
    kept = asyncio.create_task(q.wait_for_room())
    await asyncio.sleep(0)
    cancelled.cancel()
    await asyncio.sleep(0)
    assert cancelled.cancelled()
    q.wake_all()
    await asyncio.wait_for(kept, 1)
    assert q.get_nowait(1) == [0]
    getter = asyncio.create_task(q.get(1))
    await asyncio.sleep(0)
    getter.cancel()
    await asyncio.sleep(0)
    q.put_nowait([1])
    assert q.get_nowait(1) == [1]  # nothing was taken by the cancelled get


@pytest.mark.asyncio
async def test_single_items_join_the_newest_batch_only_if_the_queue_made_it() -> None:
    q: BatchQueue[int] = BatchQueue(1000)
    mine = [1, 2]
    q.put_nowait(mine)
    q.append_nowait(3)  # a producer's list is never appended to
    q.append_nowait(4)
    assert mine == [1, 2]
    assert q.qsize() == 4
    assert q.get_nowait(2) == [1, 2]
    taken = q.get_nowait(10)
    assert taken == [3, 4]
    q.append_nowait(5)  # a batch already taken is the consumer's: a new one starts
    assert taken == [3, 4]
    q.put_nowait(STOP)
    q.append_nowait(6)  # never merged into (or past) the stop marker
    assert q.get_nowait(10) == [5]
    assert q.get_nowait(10) is STOP
    assert q.get_nowait(10) == [6]
    for i in range(600):
        q.append_nowait(i)
    assert q.qsize() == 600
    # Appended batches end at APPEND_LIMIT (256) items: a get of 300 takes one at a time.
    assert [len(q.get_nowait(300)) for _ in range(3)] == [256, 256, 88]


@pytest.mark.asyncio
async def test_an_appended_item_wakes_a_waiting_getter() -> None:
    q: BatchQueue[int] = BatchQueue(10)
    getter = asyncio.create_task(q.get(5))
    await asyncio.sleep(0)
    q.append_nowait(7)
    assert await asyncio.wait_for(getter, 1) == [7]
