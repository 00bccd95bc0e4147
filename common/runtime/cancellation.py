"""Cancellation that always arrives: Python 3.11's asyncio.wait_for can lose it, and a loop then never stops.

On 3.11, `asyncio.wait_for(aw, timeout)` runs `aw` as a task of its own and waits for it; when the
waiting task is cancelled at the moment that inner task has just finished, wait_for returns its
result and the CancelledError is gone (CPython gh-86296, fixed in 3.12 by rewriting wait_for on
asyncio.timeout). The task stays "cancelling" yet runs on. redis-py sends every command through
wait_for whenever a socket timeout is set (redis.asyncio.connection.Connection.send_packed_command),
so a loop that sends commands many times a second, such as each of the aggregator's partitions,
now and then lost the cancellation of SIGTERM: a task group waited for it forever and the replica
hung after "shutting down". `install` puts 3.12's wait_for in place on 3.11, for every caller.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")

# The running Python's own wait_for, whatever install() does later (its unit test shows the race in it).
PYTHON_WAIT_FOR = asyncio.tasks.wait_for


async def wait_for(aw: Awaitable[T], timeout: float | None) -> T:  # noqa: ASYNC109  (the signature it replaces)
    """asyncio.wait_for as Python 3.12 has it: `aw` runs in the calling task under asyncio.timeout, so a
    cancellation of the caller reaches `aw` itself and can't be lost between two tasks."""
    if timeout is not None and timeout <= 0:
        # No time at all: don't start `aw`; a future already done gives its result, any other is cancelled.
        future = asyncio.ensure_future(aw)
        if future.done():
            return future.result()
        future.cancel()
        await asyncio.wait([future])
        try:
            return future.result()
        except asyncio.CancelledError as error:
            raise TimeoutError from error
    async with asyncio.timeout(timeout):
        return await aw


def install() -> None:
    """On Python 3.11, make asyncio.wait_for (for every library that calls it) the 3.12 one; later: nothing.

    Call it before the event loop starts. Code that imported the name itself (`from asyncio import wait_for`)
    keeps the old one: redis-py, the caller this exists for, looks up `asyncio.wait_for` at each call.
    """
    if sys.version_info >= (3, 12):
        return
    # Typed for generator-based coroutines too, which 3.11 no longer runs: the same function for every real caller.
    asyncio.wait_for = wait_for  # type: ignore[assignment]
    asyncio.tasks.wait_for = wait_for  # type: ignore[assignment]
