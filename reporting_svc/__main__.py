"""Run ReportingService: `python -m reporting_svc`."""

from __future__ import annotations

import grpc

from common.rpc.server import Service, service_main
from common.rpc.streams import StreamLimits
from common.storage.cluster import Cluster
from profilemesh.reporting.v1 import reporting_pb2, reporting_pb2_grpc
from reporting_svc.reports import Reports
from reporting_svc.servicer import ReportingServicer
from reporting_svc.watch import Leaderboard


def build(server: grpc.aio.Server, cluster: Cluster) -> Service:
    settings = cluster.settings
    reports = Reports(cluster, settings.partitions, settings.reporting_cache_ms)
    limits = StreamLimits(settings.streams())
    servicer = ReportingServicer(reports, Leaderboard(reports, settings.watch_interval_ms), limits)
    reporting_pb2_grpc.add_ReportingServiceServicer_to_server(servicer, server)
    return Service(
        names=[reporting_pb2.DESCRIPTOR.services_by_name["ReportingService"].full_name], on_drain=[limits.drain]
    )


def main() -> None:
    """The `profilemesh-reporting` console script."""
    service_main(
        "profilemesh-reporting", "ReportingService", "reporting_svc", lambda settings: settings.reporting_listen, build
    )


if __name__ == "__main__":
    main()
