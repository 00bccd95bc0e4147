"""ReportingService over gRPC: translates between protobuf and the reporting domain."""

from __future__ import annotations

import grpc

from common.server import translate_errors
from profilemesh.reporting.v1 import reporting_pb2, reporting_pb2_grpc
from reporting_svc.reports import Reports


class ReportingServicer(reporting_pb2_grpc.ReportingServiceServicer):
    def __init__(self, reports: Reports) -> None:
        self.reports = reports

    @translate_errors
    async def GetTopProfiles(self, request: reporting_pb2.GetTopProfilesRequest, context: grpc.aio.ServicerContext):
        ranked = await self.reports.top_profiles(request.limit)
        return reporting_pb2.GetTopProfilesResponse(
            results=[reporting_pb2.ProfileScore(user=user, score=score) for user, score in ranked]
        )

    @translate_errors
    async def GetProfileStats(self, request: reporting_pb2.GetProfileStatsRequest, context: grpc.aio.ServicerContext):
        reads = await self.reports.user_reads(request.user)
        return reporting_pb2.ProfileStats(user=request.user, reads=reads)

    @translate_errors
    async def GetOperationTotals(
        self, request: reporting_pb2.GetOperationTotalsRequest, context: grpc.aio.ServicerContext
    ):
        return reporting_pb2.OperationTotals(**await self.reports.operation_totals())
