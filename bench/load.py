"""A closed-loop gRPC load: `workers` callers each making one call after another, every outcome recorded."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

import grpc


@dataclass
class Outcome:
    item: str
    code: grpc.StatusCode
    started: float  # time.monotonic()
    ended: float


@dataclass
class LoadResult:
    outcomes: list[Outcome] = field(default_factory=list)

    def ok(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.code == grpc.StatusCode.OK]

    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.code != grpc.StatusCode.OK]

    def error_counts(self) -> dict[str, int]:
        return dict(Counter(o.code.name for o in self.failed()))


async def closed_loop(
    items: Iterable[str], call: Callable[[str], Awaitable[object]], workers: int, result: LoadResult | None = None
) -> LoadResult:
    """Call `call(item)` for every item, `workers` at a time; each item is tried once.

    Outcomes go into `result` as they come, so a caller can watch progress.
    """
    queue = iter(items)
    result = result if result is not None else LoadResult()

    async def worker() -> None:
        for item in queue:
            started = time.monotonic()
            try:
                await call(item)
                code = grpc.StatusCode.OK
            except grpc.aio.AioRpcError as error:
                code = error.code()
            result.outcomes.append(Outcome(item, code, started, time.monotonic()))

    await asyncio.gather(*(worker() for _ in range(workers)))
    return result
