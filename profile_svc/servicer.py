"""ProfileService over gRPC: translates between protobuf and the profile domain."""

from __future__ import annotations

import contextlib
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from common.rpc_errors import stream_errors, translate_errors
from common.stream_ids import format_id
from common.streams import StreamLimits
from profile_svc.events_feed import Event, EventsFeed, Position, event_filter
from profile_svc.profiles import Profiles
from profilemesh.profile.v1 import profile_pb2, profile_pb2_grpc


class ProfileServicer(profile_pb2_grpc.ProfileServiceServicer):
    def __init__(self, profiles: Profiles, feed: EventsFeed, limits: StreamLimits) -> None:
        self.profiles = profiles
        self.feed = feed
        self.limits = limits

    @translate_errors
    async def CreateProfile(
        self, request: profile_pb2.CreateProfileRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> profile_pb2.CreateProfileResponse:
        await self.profiles.create(request.user, dict(request.fields))
        return profile_pb2.CreateProfileResponse(message=f"Profile created for: {request.user}")

    @translate_errors
    async def GetProfile(
        self, request: profile_pb2.GetProfileRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> profile_pb2.Profile:
        fields = await self.profiles.get(request.user)
        return profile_pb2.Profile(user=request.user, fields=fields)

    @translate_errors
    async def UpdateProfile(
        self, request: profile_pb2.UpdateProfileRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> profile_pb2.UpdateProfileResponse:
        await self.profiles.update(request.user, dict(request.fields))
        return profile_pb2.UpdateProfileResponse(message=f"Profile updated for {request.user}")

    @translate_errors
    async def DeleteProfile(
        self, request: profile_pb2.DeleteProfileRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> profile_pb2.DeleteProfileResponse:
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
            start = Position.from_token(token, self.feed.partitions) if token else None
            with self.limits.slot() as clock:
                async with contextlib.aclosing(self.feed.watch(clock, start, wanted)) as feed:
                    async for event, position in feed:
                        response = profile_pb2.WatchProfileEventsResponse(
                            event=_event(event), resume_token=position.token()
                        )
                        await clock.send(context.write(response))
                        progress.resume_token = response.resume_token
                        clock.sent(event is not None)
                        progress.sent += event is not None


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
