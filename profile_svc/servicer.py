"""ProfileService over gRPC: translates between protobuf and the profile domain."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from common.errors import InvalidArgument, ServiceError
from common.rpc.status import MAX_CALL_S, as_service_error, stream_errors, translate_errors
from common.rpc.streams import StreamLimits
from common.storage.stream_ids import format_id
from profile_svc.events_feed import Event, EventsFeed, event_filter
from profile_svc.profiles import MAX_BATCH, Profiles
from profilemesh.profile.v1 import profile_pb2, profile_pb2_grpc

log = logging.getLogger(__name__)
# The share of a batch call's deadline its members may spend retrying (failover, MOVED) before giving up.
BATCH_RETRY_SHARE = 0.6


class ProfileServicer(profile_pb2_grpc.ProfileServiceServicer):
    def __init__(self, profiles: Profiles, feed: EventsFeed, limits: StreamLimits) -> None:
        self.profiles = profiles
        self.feed = feed
        self.limits = limits

    @translate_errors
    async def CreateProfile(
        self, request: profile_pb2.CreateProfileRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> profile_pb2.CreateProfileResponse:
        return await self._create(request)

    @translate_errors
    async def GetProfile(
        self, request: profile_pb2.GetProfileRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> profile_pb2.Profile:
        fields = await self.profiles.get(request.user)
        return profile_pb2.Profile(user=request.user, fields=fields)

    @translate_errors
    async def BatchGetProfiles(
        self, request: profile_pb2.BatchGetProfilesRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> profile_pb2.BatchGetProfilesResponse:
        remaining = context.time_remaining()
        # Members still retrying give up well before the call's deadline, so the batch answers in time.
        budget = BATCH_RETRY_SHARE * min(remaining if remaining is not None else MAX_CALL_S, MAX_CALL_S)
        found = await self.profiles.get_many(list(request.users), budget)
        return profile_pb2.BatchGetProfilesResponse(
            results=[_result(user, outcome) for user, outcome in zip(request.users, found, strict=True)]
        )

    @translate_errors
    async def UpdateProfile(
        self, request: profile_pb2.UpdateProfileRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> profile_pb2.UpdateProfileResponse:
        return await self._update(request)

    @translate_errors
    async def DeleteProfile(
        self, request: profile_pb2.DeleteProfileRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> profile_pb2.DeleteProfileResponse:
        return await self._delete(request)

    @translate_errors
    async def BatchWriteProfiles(
        self, request: profile_pb2.BatchWriteProfilesRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> profile_pb2.BatchWriteProfilesResponse:
        if not request.requests:
            raise InvalidArgument("requests must not be empty: give at least one change", field="requests")
        if len(request.requests) > MAX_BATCH:
            raise InvalidArgument(f"too many changes: {len(request.requests)}, at most {MAX_BATCH}", field="requests")
        for index, member in enumerate(request.requests):
            if member.WhichOneof("operation") is None:
                raise InvalidArgument(
                    f"requests[{index}] names no operation: set create, update or delete", field=f"requests[{index}]"
                )
        writes = [self._write(member) for member in request.requests]
        # Concurrently: the members bound for one primary share a pipeline and its wait (group commit).
        outcomes = await asyncio.gather(*(_outcome(write) for write in writes))
        return profile_pb2.BatchWriteProfilesResponse(results=[_write_result(outcome) for outcome in outcomes])

    def _write(self, member: profile_pb2.ProfileWriteRequest) -> Awaitable[Any]:
        operation = member.WhichOneof("operation")
        if operation == "create":
            return self._create(member.create)
        if operation == "update":
            return self._update(member.update)
        return self._delete(member.delete)

    async def _create(self, request: profile_pb2.CreateProfileRequest) -> profile_pb2.CreateProfileResponse:
        await self.profiles.create(request.user, dict(request.fields))
        return profile_pb2.CreateProfileResponse(message=f"Profile created for: {request.user}")

    async def _update(self, request: profile_pb2.UpdateProfileRequest) -> profile_pb2.UpdateProfileResponse:
        await self.profiles.update(request.user, dict(request.fields))
        return profile_pb2.UpdateProfileResponse(message=f"Profile updated for {request.user}")

    async def _delete(self, request: profile_pb2.DeleteProfileRequest) -> profile_pb2.DeleteProfileResponse:
        await self.profiles.delete(request.user)
        return profile_pb2.DeleteProfileResponse(message=f"Profile deleted for {request.user}")

    async def WatchProfileEvents(  # type: ignore[override]  # grpc.aio: written with context.write, not yielded
        self, request: profile_pb2.WatchProfileEventsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        # Where to resume: the token of the last message written in full (a write cut short by a stop may
        # or may not have reached the client, which then resumes from the last message it did receive).
        token = request.resume_token
        async with stream_errors(context, "WatchProfileEvents", resume_token=token) as progress:
            wanted = event_filter(request.users, request.types)
            start = await self.feed.resume(token) if token else None
            with self.limits.slot(self.limits.grpc_client(context)) as clock:
                async with contextlib.aclosing(self.feed.watch(clock, start, wanted)) as feed:
                    async for event, position in feed:
                        response = profile_pb2.WatchProfileEventsResponse(
                            event=_event(event), resume_token=position.token()
                        )
                        await clock.send(context.write(response))
                        progress.resume_token = response.resume_token
                        clock.sent(event is not None)
                        progress.sent += event is not None


def _result(user: str, outcome: dict[str, str] | Exception) -> profile_pb2.BatchGetProfileResult:
    """One member's result: its profile, or the status GetProfile would have failed with."""
    if not isinstance(outcome, Exception):
        return profile_pb2.BatchGetProfileResult(profile=profile_pb2.Profile(user=user, fields=outcome))
    failure = as_service_error(outcome)
    if failure is None:  # a bug, not an outcome: fail the call as GetProfile would
        raise outcome
    if not isinstance(outcome, ServiceError):
        log.warning("BatchGetProfiles: %s: %r", failure.message, outcome)
    return profile_pb2.BatchGetProfileResult(error=failure.status())


async def _outcome(write: Awaitable[Any]) -> Any:
    """A member's response, or the error it met (a bug included: _write_result re-raises that)."""
    try:
        return await write
    except Exception as error:
        return error


def _write_result(outcome: Any) -> profile_pb2.ProfileWriteResult:
    """One change's result: its own call's response, or the status that call would have failed with."""
    if isinstance(outcome, profile_pb2.CreateProfileResponse):
        return profile_pb2.ProfileWriteResult(created=outcome)
    if isinstance(outcome, profile_pb2.UpdateProfileResponse):
        return profile_pb2.ProfileWriteResult(updated=outcome)
    if isinstance(outcome, profile_pb2.DeleteProfileResponse):
        return profile_pb2.ProfileWriteResult(deleted=outcome)
    failure = as_service_error(outcome)
    if failure is None:  # a bug, not an outcome: fail the call as the member's own call would
        raise outcome
    if not isinstance(outcome, ServiceError):
        log.warning("BatchWriteProfiles: %s: %r", failure.message, outcome)
    return profile_pb2.ProfileWriteResult(error=failure.status())


def _event(event: Event | None) -> profile_pb2.ProfileEvent | None:
    if event is None:
        return None
    return profile_pb2.ProfileEvent(
        user=event.user,
        type=event.type,
        time=Timestamp(seconds=event.ts_ms // 1000, nanos=event.ts_ms % 1000 * 1_000_000),
        partition=event.partition,
        id=format_id(event.id),
    )
