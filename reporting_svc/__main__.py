"""Run ReportingService: `python -m reporting_svc`."""

from __future__ import annotations

import asyncio

import grpc

from common.cluster import Cluster
from common.config import Settings
from common.logs import setup_logging
from common.server import serve
from profilemesh.reporting.v1 import reporting_pb2, reporting_pb2_grpc
from reporting_svc.reports import Reports
from reporting_svc.servicer import ReportingServicer


async def main(settings: Settings) -> None:
    cluster = Cluster(settings)

    def register(server: grpc.aio.Server) -> list[str]:
        reporting_pb2_grpc.add_ReportingServiceServicer_to_server(ReportingServicer(Reports(cluster)), server)
        return [reporting_pb2.DESCRIPTOR.services_by_name["ReportingService"].full_name]

    await serve(settings.reporting_listen, cluster, register)


if __name__ == "__main__":
    settings = Settings.from_env()
    setup_logging("reporting_svc", settings.log_level)
    asyncio.run(main(settings))
