"""ProfileService over gRPC: translates between protobuf and the profile domain."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from common.errors import InvalidArgument
from common.server import translate_errors
from common.streams import CLUSTER_UNAVAILABLE, StreamEnded, StreamLimits, TooManyStreams
from profile_svc.events_feed import Event, EventsFeed, FellBehind, Position, Trimmed, event_filter
from profile_svc.profiles import Profiles
from profilemesh.profile.v1 import profile_pb2, profile_pb2_grpc

log = logging.getLogger(__name__)


class ProfileServicer(profile_pb2_grpc.ProfileServiceServicer):
    def __init__(self, profiles: Profiles, feed: EventsFeed, limits: StreamLimits) -> None:
        self.profiles = profiles
        self.feed = feed
        self.limits = limits

    @translate_errors
    async def CreateProfile(self, request: profile_pb2.CreateProfileRequest, context: grpc.aio.ServicerContext):
        await self.profiles.create(request.user, dict(request.fields))
        return profile_pb2.CreateProfileResponse(message=f"Profile created for: {request.user}")

    @translate_errors
    async def GetProfile(self, request: profile_pb2.GetProfileRequest, context: grpc.aio.ServicerContext):
        fields = await self.profiles.get(request.user)
        return profile_pb2.Profile(user=request.user, fields=fields)

    @translate_errors
    async def UpdateProfile(self, request: profile_pb2.UpdateProfileRequest, context: grpc.aio.ServicerContext):
        await self.profiles.update(request.user, dict(request.fields))
        return profile_pb2.UpdateProfileResponse(message=f"Profile updated for {request.user}")

    @translate_errors
    async def DeleteProfile(self, request: profile_pb2.DeleteProfileRequest, context: grpc.aio.ServicerContext):
        await self.profiles.delete(request.user)
        return profile_pb2.DeleteProfileResponse(message=f"Profile deleted for {request.user}")

    async def WatchProfileEvents(
        self, request: profile_pb2.WatchProfileEventsRequest, context: grpc.aio.ServicerContext
    ):
        # Where to resume: the token of the last message written in full (a write cut short by a stop may
        # or may not have reached the client, which then resumes from the last message it did receive).
        token = request.resume_token
        sent = 0
        try:
            wanted = event_filter(request.users, request.types)
            start = Position.from_token(token, self.feed.partitions) if token else None
            with self.limits.slot() as clock:
                async with contextlib.aclosing(self.feed.watch(clock, start, wanted)) as feed:
                    async for event, position in feed:
                        response = profile_pb2.WatchProfileEventsResponse(
                            event=_event(event), resume_token=position.token()
                        )
                        await clock.send(context.write(response))
                        token = response.resume_token
                        clock.sent(event is not None)
                        sent += event is not None
        except asyncio.CancelledError:
            log.info("WatchProfileEvents ended after %d events: cancelled by the client", sent)
            raise
        except InvalidArgument as error:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        except TooManyStreams as error:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(error))
        except Trimmed as error:
            log.info("WatchProfileEvents ended after %d events: %s", sent, error)
            await context.abort(grpc.StatusCode.OUT_OF_RANGE, str(error))
        except (FellBehind, StreamEnded, *CLUSTER_UNAVAILABLE) as error:
            code = grpc.StatusCode.RESOURCE_EXHAUSTED if isinstance(error, FellBehind) else grpc.StatusCode.UNAVAILABLE
            reason = (
                str(error) if isinstance(error, (FellBehind, StreamEnded)) else "the cluster is unavailable; reconnect"
            )
            log.info("WatchProfileEvents ended after %d events: %s", sent, reason)
            await context.abort(
                code, f"{reason}; resume with resume_token {token}", trailing_metadata=(("resume-token", token),)
            )


def _event(event: Event | None) -> profile_pb2.ProfileEvent | None:
    if event is None:
        return None
    return profile_pb2.ProfileEvent(
        user=event.user,
        type=event.type,
        time=Timestamp(seconds=event.ts_ms // 1000, nanos=event.ts_ms % 1000 * 1_000_000),
        partition=event.partition,
        id=f"{event.id[0]}-{event.id[1]}",
    )
