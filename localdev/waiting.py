"""Waiting for a condition with a deadline: how every start-up and recovery here is awaited."""

from __future__ import annotations

import time
from typing import Callable, TypeVar

T = TypeVar("T")


def poll_until(condition: Callable[[], T], timeout_s: float, what: str, interval_s: float = 0.1) -> T:
    """Call `condition` until it returns something truthy, and return that; TimeoutError after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(interval_s)
