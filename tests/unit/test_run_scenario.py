"""tests.helpers.run_scenario: a task that outlives its cancellation fails the test, naming itself, at once."""

from __future__ import annotations

import asyncio

import pytest

from tests.helpers import run_scenario


async def _leaves_a_task(stubborn: bool) -> str:
    async def background() -> None:
        while True:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                if not stubborn:
                    raise

    asyncio.create_task(background(), name="left-behind")
    await asyncio.sleep(0)
    return "done"


def test_tasks_left_behind_are_cancelled_and_the_result_returned() -> None:
    assert run_scenario(_leaves_a_task(stubborn=False), cleanup_s=1) == "done"


def test_a_task_that_swallows_its_cancellation_fails_the_test_with_its_stack() -> None:
    with pytest.raises(AssertionError, match=r"still running 1 s after(.|\n)*_leaves_a_task.<locals>.background"):
        run_scenario(_leaves_a_task(stubborn=True), cleanup_s=1)  # asyncio.run: held until pytest's timeout


def test_the_scenarios_own_failure_comes_through() -> None:
    async def failing() -> None:
        raise ValueError("the scenario's")

    with pytest.raises(ValueError, match="the scenario's"):
        run_scenario(failing())
