"""common.runtime.cancellation: a cancellation that arrives as wait_for's inner work finishes is kept, not lost."""

from __future__ import annotations

import asyncio
import inspect
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from redis.asyncio.connection import Connection

from common.runtime import cancellation

WaitFor = Callable[[Awaitable[Any], float | None], Awaitable[Any]]


async def _ran_on_after_cancel(wait_for: WaitFor) -> bool:
    """Whether a task cancelled while wait_for's inner work is already done runs on as if never cancelled.

    The race redis-py's sends hit by chance (CPython gh-86296), made certain: the task is cancelled
    after what wait_for waits on has finished and before wait_for has seen it.
    """

    async def loop_body() -> None:
        sent = asyncio.ensure_future(asyncio.sleep(0))
        await sent
        task = asyncio.current_task()
        assert task is not None
        task.cancel()  # SIGTERM's cancellation, arriving now
        await wait_for(sent, 10)

    try:
        await asyncio.create_task(loop_body())
    except asyncio.CancelledError:
        return False
    return True


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="3.12 rewrote wait_for on asyncio.timeout")
def test_python_311s_wait_for_loses_the_cancellation() -> None:
    """The cause of the hang: what install() replaces. Fails once the race is gone from the running Python."""
    assert asyncio.run(_ran_on_after_cancel(cancellation.PYTHON_WAIT_FOR))


def test_the_replacement_keeps_the_cancellation() -> None:
    assert not asyncio.run(_ran_on_after_cancel(cancellation.wait_for))


def test_the_replacement_still_returns_results_and_times_out() -> None:
    async def scenario() -> None:
        async def answer() -> int:
            await asyncio.sleep(0.01)
            return 42

        assert await cancellation.wait_for(answer(), 5) == 42
        assert await cancellation.wait_for(answer(), None) == 42
        slow = asyncio.ensure_future(asyncio.sleep(10))
        with pytest.raises(TimeoutError):
            await cancellation.wait_for(slow, 0.01)
        assert slow.cancelled()  # what timed out is cancelled, as wait_for promises
        never_started = asyncio.ensure_future(answer())
        with pytest.raises(TimeoutError):
            await cancellation.wait_for(never_started, 0)
        done = asyncio.get_running_loop().create_future()
        done.set_result("ready")
        assert await cancellation.wait_for(done, 0) == "ready"

    asyncio.run(scenario())


def test_install_covers_redis_pys_sends() -> None:
    """redis-py sends each command under asyncio.wait_for, looked up at the call: install() replaces that one."""
    source = inspect.getsource(Connection.send_packed_command)
    assert "asyncio.wait_for(" in source or "wait_for" not in source
    original = asyncio.wait_for
    try:
        cancellation.install()
        expected = original if sys.version_info >= (3, 12) else cancellation.wait_for
        assert asyncio.wait_for is expected and asyncio.tasks.wait_for is expected
    finally:
        asyncio.wait_for = original
        asyncio.tasks.wait_for = original
