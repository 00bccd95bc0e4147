"""The asyncio clients (grpc.aio): the one implementation; blocking.py runs it on a loop of its own."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterable, Sequence
from typing import Any, ClassVar, Self, TypeVar

import grpc

from profilemesh.client import policy
from profilemesh.client.channel import Tls, aio_channel, target_from_env
from profilemesh.client.errors import (
    OutcomeUnknown,
    ProfileExists,
    ProfilemeshError,
    ProfileNotFound,
    StreamEnded,
    from_rpc_error,
    from_rpc_status,
)
from profilemesh.client.policy import FeedAction, FeedPolicy, Kind, RetryPolicy
from profilemesh.client.types import (
    BatchResult,
    Leaderboard,
    OperationTotals,
    Profile,
    ProfileEvent,
    ProfileScore,
)
from profilemesh.profile.v1 import profile_pb2, profile_pb2_grpc
from profilemesh.reporting.v1 import reporting_pb2, reporting_pb2_grpc

T = TypeVar("T")
log = logging.getLogger("profilemesh.client")
TokenSink = Callable[[str], Awaitable[None] | None]

# BatchGetProfiles takes at most 1000 users; get_many sends chunks of this size, this many at once.
BATCH_MAX = 1000
GET_MANY_CHUNK = 500
GET_MANY_CONCURRENCY = 4


class _Base:
    SERVICE: ClassVar[str]  # its target's variable: PROFILEMESH_<SERVICE>_TARGET

    def __init__(
        self,
        target: str,
        *,
        tls: Tls | None = None,
        retry: RetryPolicy | None = None,
        feed: FeedPolicy | None = None,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        self.target = target
        self.retry = retry or RetryPolicy()
        self.feed = feed or FeedPolicy()
        self._channel = aio_channel(target, tls, options)

    @classmethod
    def from_env(cls, **kwargs: Any) -> Self:
        """PROFILEMESH_<SERVICE>_TARGET and PROFILEMESH_GRPC_* (the services' own variables)."""
        return cls(target_from_env(cls.SERVICE), tls=Tls.from_env(), **kwargs)

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self: T) -> T:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def _call(self, method: Callable[..., Any], request: Any, kind: Kind, timeout_s: float | None) -> Any:
        """One unary call with the retry policy: every attempt within one deadline."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (timeout_s or self.retry.timeout_s)
        attempts = tries = 0  # calls that reached a replica; every call
        while True:
            try:
                return await method(request, timeout=max(deadline - loop.time(), 0.001))
            except grpc.aio.AioRpcError as failure:
                error = from_rpc_error(failure)
            tries += 1
            # A call that never reached a replica costs none of max_attempts: it is tried until the deadline.
            attempts += not policy.never_sent(error)
            pause = self.retry.backoff_s(tries - 1)
            if (
                attempts >= self.retry.max_attempts
                or not policy.retryable(kind, error)
                or loop.time() + pause >= deadline
            ):
                raise policy.final(kind, error) from None
            await asyncio.sleep(pause)


class AsyncProfileClient(_Base):
    """ProfileService: typed results and errors, retries by the policy, and a change feed that resumes."""

    SERVICE = "profile"

    def __init__(self, target: str, **kwargs: Any) -> None:
        super().__init__(target, **kwargs)
        self._stub = profile_pb2_grpc.ProfileServiceStub(self._channel)

    async def create(self, user: str, fields: dict[str, str], *, timeout_s: float | None = None) -> None:
        """Create a profile. ProfileExists if there is one; OutcomeUnknown if it may or may not have run."""
        request = profile_pb2.CreateProfileRequest(user=user, fields=fields)
        await self._call(self._stub.CreateProfile, request, Kind.CHANGE, timeout_s)

    async def get(self, user: str, *, timeout_s: float | None = None) -> Profile:
        reply = await self._call(self._stub.GetProfile, profile_pb2.GetProfileRequest(user=user), Kind.READ, timeout_s)
        return Profile(reply.user, dict(reply.fields))

    async def update(self, user: str, fields: dict[str, str], *, timeout_s: float | None = None) -> None:
        """Set these fields (others are kept). Setting the same values again is harmless, so an
        OutcomeUnknown here is resolved by calling update again."""
        request = profile_pb2.UpdateProfileRequest(user=user, fields=fields)
        await self._call(self._stub.UpdateProfile, request, Kind.CHANGE, timeout_s)

    async def delete(self, user: str, *, timeout_s: float | None = None) -> None:
        request = profile_pb2.DeleteProfileRequest(user=user)
        await self._call(self._stub.DeleteProfile, request, Kind.CHANGE, timeout_s)

    async def ensure_created(
        self, user: str, fields: dict[str, str], *, attempts: int = 5, timeout_s: float | None = None
    ) -> bool:
        """Create the profile unless it exists, resolving unknown outcomes: after an OutcomeUnknown the
        create is sent again, and ProfileExists then means an earlier attempt made it. Returns True when
        this call's create was confirmed, False when the profile was there already or an unconfirmed
        attempt made it. (Someone else's create of the same user in between also reads as done.)"""
        return await _resolved(
            lambda: self.create(user, fields, timeout_s=timeout_s), ProfileExists, f"create of {user}", attempts
        )

    async def ensure_deleted(self, user: str, *, attempts: int = 5, timeout_s: float | None = None) -> bool:
        """Delete the profile if there is one, resolving unknown outcomes (ProfileNotFound after one: done).
        Returns True when this call's delete was confirmed."""
        return await _resolved(
            lambda: self.delete(user, timeout_s=timeout_s), ProfileNotFound, f"delete of {user}", attempts
        )

    async def get_many(
        self, users: Iterable[str], *, chunk: int = GET_MANY_CHUNK, timeout_s: float | None = None
    ) -> list[BatchResult]:
        """Many profiles through BatchGetProfiles, in chunks (a few at once): one result per user, in
        order, each the profile or its typed error (ProfileNotFound; PartitionUnavailable once retries of
        that member are spent: members the server could not serve are asked for again, the rest kept)."""
        users = list(users)
        if not 1 <= chunk <= BATCH_MAX:
            raise ValueError(f"chunk must be 1 to {BATCH_MAX}, got {chunk}")
        limit = asyncio.Semaphore(GET_MANY_CONCURRENCY)

        async def one(part: list[str]) -> list[BatchResult]:
            results: list[BatchResult | None] = [None] * len(part)
            todo = list(range(len(part)))
            for attempt in range(self.retry.max_attempts):
                if attempt:  # members the server could not serve this time (a shard in trouble): again
                    await asyncio.sleep(self.retry.backoff_s(attempt - 1))
                request = profile_pb2.BatchGetProfilesRequest(users=[part[i] for i in todo])
                async with limit:
                    reply = await self._call(self._stub.BatchGetProfiles, request, Kind.READ, timeout_s)
                again = []
                for index, member in zip(todo, reply.results, strict=True):
                    if member.HasField("profile"):
                        profile = Profile(member.profile.user, dict(member.profile.fields))
                        results[index] = BatchResult(part[index], profile=profile)
                    else:
                        error = from_rpc_status(member.error)
                        results[index] = BatchResult(part[index], error=error)
                        if policy.retryable(Kind.READ, error):
                            again.append(index)
                if not again:
                    break
                todo = again
            return [result for result in results if result is not None]

        parts = await asyncio.gather(*(one(users[i : i + chunk]) for i in range(0, len(users), chunk)))
        return [result for part in parts for result in part]

    def watch_events(
        self,
        *,
        resume_token: str = "",
        users: Sequence[str] = (),
        types: Sequence[str] = (),
        on_token: TokenSink | None = None,
    ) -> EventWatch:
        """The change feed as an async iterator that resumes by itself (see EventWatch)."""
        request = profile_pb2.WatchProfileEventsRequest(users=list(users), types=list(types))
        return EventWatch(self._stub, request, resume_token, on_token, self.feed)


class EventWatch:
    """`async for event in watch`: every change after `resume_token` (from now without one), once each.

    It keeps the token of the latest message (heartbeats included) and reconnects with it when the stream
    ends with UNAVAILABLE (the replica drains, is stopped or killed, the stream's lifetime ends) or
    RESOURCE_EXHAUSTED, with backoff, giving up after FeedPolicy.max_outage_s without a message. It
    raises FeedRestartRequired (EventsTrimmed, EventsHistoryChanged) when the token can't be resumed
    from, and InvalidResumeToken when the service refuses the token: start again without one after
    re-reading what you derive from the events. `on_token(token)` is called (awaited if it returns an
    awaitable) after each event was handled (when the loop asks for the next one) and on each heartbeat:
    persist it there, and a restarted process resumes where this one stopped (the last event at most
    redelivered). `resume_token` is the token of the last message received.
    """

    def __init__(
        self,
        stub: profile_pb2_grpc.ProfileServiceStub,
        request: profile_pb2.WatchProfileEventsRequest,
        resume_token: str,
        on_token: TokenSink | None,
        feed: FeedPolicy,
    ) -> None:
        self._stub, self._request, self._on_token, self._feed = stub, request, on_token, feed
        self.resume_token = resume_token
        self.reconnects = 0  # how often it went on after a stream ended (for logs and tests)
        self._events = self._run()

    def __aiter__(self) -> EventWatch:
        return self

    async def __anext__(self) -> ProfileEvent:
        return await self._events.__anext__()

    async def aclose(self) -> None:
        await self._events.aclose()

    async def _persist(self, token: str) -> None:
        if self._on_token is not None:
            done = self._on_token(token)
            if inspect.isawaitable(done):
                await done

    async def _run(self) -> AsyncGenerator[ProfileEvent, None]:
        loop = asyncio.get_running_loop()
        failures, last_progress = 0, loop.time()
        while True:
            self._request.resume_token = self.resume_token
            call: Any = self._stub.WatchProfileEvents(self._request)  # an aio call (the stubs type the sync one)
            try:
                async for message in call:
                    failures, last_progress = 0, loop.time()
                    token = message.resume_token
                    if message.HasField("event"):
                        event = message.event
                        self.resume_token = token
                        yield ProfileEvent(
                            event.user,
                            event.type,
                            event.time.ToDatetime(),
                            event.partition,
                            event.id,
                            token,
                        )
                    else:
                        self.resume_token = token
                    await self._persist(token)
                error: ProfilemeshError = StreamEnded("the stream ended without a status", code=grpc.StatusCode.OK)
            except grpc.aio.AioRpcError as failure:
                error = from_rpc_error(failure)
            finally:
                call.cancel()
            await _pause_or_raise(self._feed, error, failures, last_progress)
            failures += 1
            self.reconnects += 1


class AsyncReportingClient(_Base):
    """ReportingService: the statistics, read-only (every call is retried on UNAVAILABLE)."""

    SERVICE = "reporting"

    def __init__(self, target: str, **kwargs: Any) -> None:
        super().__init__(target, **kwargs)
        self._stub = reporting_pb2_grpc.ReportingServiceStub(self._channel)

    async def top(self, limit: int, *, timeout_s: float | None = None) -> list[ProfileScore]:
        request = reporting_pb2.GetTopProfilesRequest(limit=limit)
        reply = await self._call(self._stub.GetTopProfiles, request, Kind.READ, timeout_s)
        return [ProfileScore(r.user, r.score) for r in reply.results]

    async def stats(self, user: str, *, timeout_s: float | None = None) -> int:
        """How often the user's profile was read since it was (last) created."""
        request = reporting_pb2.GetProfileStatsRequest(user=user)
        reply = await self._call(self._stub.GetProfileStats, request, Kind.READ, timeout_s)
        return int(reply.reads)

    async def totals(self, *, timeout_s: float | None = None) -> OperationTotals:
        request = reporting_pb2.GetOperationTotalsRequest()
        reply = await self._call(self._stub.GetOperationTotals, request, Kind.READ, timeout_s)
        return _totals(reply)

    async def watch_top(self, limit: int) -> AsyncIterator[Leaderboard]:
        """The top `limit` and the totals now, then on each change; reconnects as watch_events does (each
        connection starts with the current state, so nothing needs a token)."""
        loop = asyncio.get_running_loop()
        request = reporting_pb2.WatchTopProfilesRequest(limit=limit)
        failures, last_progress = 0, loop.time()
        while True:
            call: Any = self._stub.WatchTopProfiles(request)
            try:
                async for message in call:
                    failures, last_progress = 0, loop.time()
                    yield Leaderboard([ProfileScore(r.user, r.score) for r in message.results], _totals(message.totals))
                error: ProfilemeshError = StreamEnded("the stream ended without a status", code=grpc.StatusCode.OK)
            except grpc.aio.AioRpcError as failure:
                error = from_rpc_error(failure)
            finally:
                call.cancel()
            await _pause_or_raise(self.feed, error, failures, last_progress)
            failures += 1


async def _resolved(
    change: Callable[[], Awaitable[None]], already: type[ProfilemeshError], what: str, attempts: int
) -> bool:
    """Send `change` until its outcome is known: True when it was confirmed, False when it answers `already` (it
    was done, by an earlier unconfirmed attempt or before); OutcomeUnknown again after `attempts` tries."""
    unsure: ProfilemeshError | None = None
    for _ in range(attempts):
        try:
            await change()
            return True
        except already:
            return False
        except OutcomeUnknown as error:
            log.info("%s: outcome unknown (%s); sending it again", what, error.message)
            unsure = error
    assert unsure is not None
    raise unsure


async def _pause_or_raise(feed: FeedPolicy, error: ProfilemeshError, failures: int, last_progress: float) -> None:
    """After a stream ended: raise `error` when the feed policy gives up on it (its kind, or no progress for
    max_outage_s), else wait the policy's backoff before the caller reconnects."""
    if policy.on_feed_error(error) is FeedAction.RAISE and error.code != grpc.StatusCode.OK:
        raise error
    if asyncio.get_running_loop().time() - last_progress > feed.max_outage_s:
        raise error
    await asyncio.sleep(feed.backoff_s(failures))


def _totals(reply: reporting_pb2.OperationTotals) -> OperationTotals:
    return OperationTotals(reply.create, reply.read, reply.update, reply.delete)
