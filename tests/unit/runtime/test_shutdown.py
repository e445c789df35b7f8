"""Stopping a service's background tasks: a task that loses a cancellation still ends."""

from __future__ import annotations

import asyncio

import pytest

from libs.runtime.app import cancel_until_done

pytestmark = pytest.mark.timeout(10)


async def test_a_task_that_swallowed_one_cancellation_is_cancelled_again_until_it_ends() -> None:
    """On Python 3.11 ``asyncio.wait_for`` loses a cancellation that arrives as its inner future completes, and the
    loop around it goes on (a periodic job with a backlog of NATS requests): this task does that on purpose once."""
    lost = 0

    async def busy_loop() -> None:
        nonlocal lost
        while True:
            try:
                await asyncio.sleep(0.01)
            except asyncio.CancelledError:
                if lost:
                    raise
                lost += 1  # as wait_for returning the inner result instead of raising

    task = asyncio.create_task(busy_loop())
    await asyncio.sleep(0.05)
    await asyncio.wait_for(cancel_until_done([task]), 5)
    assert task.cancelled()
    assert lost == 1


async def test_tasks_done_already_or_failed_end_quietly() -> None:
    async def fails() -> None:
        raise RuntimeError("a job that failed on its way out")

    failed = asyncio.create_task(fails())
    finished = asyncio.create_task(asyncio.sleep(0))
    await asyncio.sleep(0.01)
    await cancel_until_done([failed, finished])
    assert failed.done()
    assert finished.done()
    assert not finished.cancelled()
