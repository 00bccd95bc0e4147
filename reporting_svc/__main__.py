"""Run ReportingService: `python -m reporting_svc`."""

from __future__ import annotations

import grpc

from common.cluster import Cluster
from common.server import Service, run_service
from profilemesh.reporting.v1 import reporting_pb2, reporting_pb2_grpc
from reporting_svc.reports import Reports
from reporting_svc.servicer import ReportingServicer


def build(server: grpc.aio.Server, cluster: Cluster) -> Service:
    reporting_pb2_grpc.add_ReportingServiceServicer_to_server(ReportingServicer(Reports(cluster)), server)
    return Service(names=[reporting_pb2.DESCRIPTOR.services_by_name["ReportingService"].full_name])


if __name__ == "__main__":
    run_service("reporting_svc", lambda settings: settings.reporting_listen, build)
