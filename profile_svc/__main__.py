"""Run ProfileService: `python -m profile_svc`."""

from __future__ import annotations

import asyncio

import grpc

from common.cluster import Cluster
from common.config import Settings
from common.logs import setup_logging
from common.server import serve
from profile_svc.profiles import Profiles
from profile_svc.servicer import ProfileServicer
from profilemesh.profile.v1 import profile_pb2, profile_pb2_grpc


async def main(settings: Settings) -> None:
    cluster = Cluster(settings)

    def register(server: grpc.aio.Server) -> list[str]:
        profile_pb2_grpc.add_ProfileServiceServicer_to_server(ProfileServicer(Profiles(cluster)), server)
        return [profile_pb2.DESCRIPTOR.services_by_name["ProfileService"].full_name]

    await serve(settings.profile_listen, cluster, register)


if __name__ == "__main__":
    settings = Settings.from_env()
    setup_logging("profile_svc", settings.log_level)
    asyncio.run(main(settings))
