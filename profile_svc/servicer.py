"""ProfileService over gRPC: translates between protobuf and the profile domain."""

from __future__ import annotations

import grpc

from common.server import translate_errors
from profile_svc.profiles import Profiles
from profilemesh.profile.v1 import profile_pb2, profile_pb2_grpc


class ProfileServicer(profile_pb2_grpc.ProfileServiceServicer):
    def __init__(self, profiles: Profiles) -> None:
        self.profiles = profiles

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
