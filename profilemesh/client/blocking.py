"""The blocking clients: the asyncio implementation (aio.py), run on an event loop in a thread of its own.

One implementation means one retry policy and one feed state machine to get right. The loop thread
starts with the client and stops with close(); any number of the caller's threads may share a client.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterable, Iterator, Sequence
from concurrent.futures import Future
from typing import Any, ClassVar, Self, TypeVar

from profilemesh.client.aio import AsyncProfileClient, AsyncReportingClient, EventWatch
from profilemesh.client.channel import Tls, target_from_env
from profilemesh.client.types import BatchResult, Leaderboard, OperationTotals, Profile, ProfileEvent, ProfileScore

T = TypeVar("T")


class _Loop:
    """An event loop running in a daemon thread; run() submits a coroutine and waits for its result."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="profilemesh-client", daemon=True)
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        future: Future[T] = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        return future.result()

    def stop(self) -> None:
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join()
            self.loop.close()


class _Blocking:
    ASYNC: ClassVar[type[AsyncProfileClient] | type[AsyncReportingClient]]  # the client it runs
    _async: Any

    def __init__(self, target: str, **kwargs: Any) -> None:
        self._loop = _Loop()
        self._async = self._loop.run(_make(self.ASYNC, target, kwargs))

    @classmethod
    def from_env(cls, **kwargs: Any) -> Self:
        """PROFILEMESH_<SERVICE>_TARGET and PROFILEMESH_GRPC_* (the services' own variables)."""
        return cls(target_from_env(cls.ASYNC.SERVICE), tls=Tls.from_env(), **kwargs)

    @property
    def target(self) -> str:
        return str(self._async.target)

    def close(self) -> None:
        self._loop.run(self._async.close())
        self._loop.stop()

    def __enter__(self: T) -> T:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


async def _make(factory: Any, target: str, kwargs: dict[str, Any]) -> Any:
    return factory(target, **kwargs)  # the channel belongs to the loop it is made on


class ProfileClient(_Blocking):
    """The blocking ProfileService client; every method as AsyncProfileClient's."""

    ASYNC = AsyncProfileClient

    def create(self, user: str, fields: dict[str, str], *, timeout_s: float | None = None) -> None:
        self._loop.run(self._async.create(user, fields, timeout_s=timeout_s))

    def get(self, user: str, *, timeout_s: float | None = None) -> Profile:
        return self._loop.run(self._async.get(user, timeout_s=timeout_s))  # type: ignore[no-any-return]

    def update(self, user: str, fields: dict[str, str], *, timeout_s: float | None = None) -> None:
        self._loop.run(self._async.update(user, fields, timeout_s=timeout_s))

    def delete(self, user: str, *, timeout_s: float | None = None) -> None:
        self._loop.run(self._async.delete(user, timeout_s=timeout_s))

    def ensure_created(self, user: str, fields: dict[str, str], *, attempts: int = 5) -> bool:
        return self._loop.run(self._async.ensure_created(user, fields, attempts=attempts))  # type: ignore[no-any-return]

    def ensure_deleted(self, user: str, *, attempts: int = 5) -> bool:
        return self._loop.run(self._async.ensure_deleted(user, attempts=attempts))  # type: ignore[no-any-return]

    def get_many(self, users: Iterable[str], *, chunk: int = 500) -> list[BatchResult]:
        return self._loop.run(self._async.get_many(list(users), chunk=chunk))

    def watch_events(
        self, *, resume_token: str = "", users: Sequence[str] = (), types: Sequence[str] = (), on_token: Any = None
    ) -> BlockingEventWatch:
        """As AsyncProfileClient.watch_events, as a plain iterator; on_token is called in the loop's thread."""
        watch = self._async.watch_events(resume_token=resume_token, users=users, types=types, on_token=on_token)
        return BlockingEventWatch(self._loop, watch)


class BlockingEventWatch(Iterator[ProfileEvent]):
    def __init__(self, loop: _Loop, watch: EventWatch) -> None:
        self._loop, self._watch = loop, watch

    @property
    def resume_token(self) -> str:
        return self._watch.resume_token

    def __next__(self) -> ProfileEvent:
        try:
            return self._loop.run(self._watch.__anext__())
        except StopAsyncIteration:
            raise StopIteration from None

    def close(self) -> None:
        self._loop.run(self._watch.aclose())


class ReportingClient(_Blocking):
    """The blocking ReportingService client; every method as AsyncReportingClient's."""

    ASYNC = AsyncReportingClient

    def top(self, limit: int, *, timeout_s: float | None = None) -> list[ProfileScore]:
        return self._loop.run(self._async.top(limit, timeout_s=timeout_s))

    def stats(self, user: str, *, timeout_s: float | None = None) -> int:
        return self._loop.run(self._async.stats(user, timeout_s=timeout_s))  # type: ignore[no-any-return]

    def totals(self, *, timeout_s: float | None = None) -> OperationTotals:
        return self._loop.run(self._async.totals(timeout_s=timeout_s))  # type: ignore[no-any-return]

    def watch_top(self, limit: int) -> Iterator[Leaderboard]:
        stream = self._async.watch_top(limit)
        while True:
            try:
                yield self._loop.run(stream.__anext__())
            except StopAsyncIteration:
                return
