"""Run ProfileService: `python -m profile_svc`."""

from __future__ import annotations

import grpc

from common.rpc.server import Service, service_main
from common.rpc.streams import StreamLimits
from common.storage.cluster import Cluster
from profile_svc.events_feed import EventsFeed
from profile_svc.profiles import Profiles
from profile_svc.servicer import ProfileServicer
from profilemesh.profile.v1 import profile_pb2, profile_pb2_grpc


def build(server: grpc.aio.Server, cluster: Cluster) -> Service:
    settings = cluster.settings
    limits = StreamLimits(settings.streams())
    feed = EventsFeed(
        cluster,
        settings.partitions,
        settings.stream_queue,
        settings.stream_quiet_check_s,
        settings.events_retention_s,
    )
    servicer = ProfileServicer(Profiles(cluster, settings.partitions), feed, limits)
    profile_pb2_grpc.add_ProfileServiceServicer_to_server(servicer, server)
    return Service(
        names=[profile_pb2.DESCRIPTOR.services_by_name["ProfileService"].full_name],
        on_drain=[limits.drain],
        on_cluster=[feed.tokens],  # records the deployment's identity on first start
    )


def main() -> None:
    """The `profilemesh-profile` console script."""
    service_main(
        "profilemesh-profile", "ProfileService", "profile_svc", lambda settings: settings.profile_listen, build
    )


if __name__ == "__main__":
    main()
