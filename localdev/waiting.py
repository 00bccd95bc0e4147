"""Waiting for a condition with a deadline: how every start-up and recovery here is awaited."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import TypeVar

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


def answers_ok(url: str, timeout_s: float = 1) -> bool:
    """Whether an HTTP GET of `url` answers 200 now: the readiness probe of every HTTP process we start."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as reply:
            return bool(reply.status == 200)
    except (urllib.error.URLError, OSError):
        return False
