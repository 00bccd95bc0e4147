"""ReportingService over gRPC: translates between protobuf and the reporting domain."""

from __future__ import annotations

import contextlib
from typing import Any

import grpc

from common.rpc.status import stream_errors, translate_errors
from common.rpc.streams import StreamLimits
from profilemesh.reporting.v1 import reporting_pb2, reporting_pb2_grpc
from reporting_svc.reports import Reports
from reporting_svc.watch import Leaderboard


class ReportingServicer(reporting_pb2_grpc.ReportingServiceServicer):
    def __init__(self, reports: Reports, leaderboard: Leaderboard, limits: StreamLimits) -> None:
        self.reports = reports
        self.leaderboard = leaderboard
        self.limits = limits

    @translate_errors
    async def GetTopProfiles(
        self, request: reporting_pb2.GetTopProfilesRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> reporting_pb2.GetTopProfilesResponse:
        ranked = await self.reports.top_profiles(request.limit)
        return reporting_pb2.GetTopProfilesResponse(
            results=[reporting_pb2.ProfileScore(user=user, score=score) for user, score in ranked]
        )

    @translate_errors
    async def GetProfileStats(
        self, request: reporting_pb2.GetProfileStatsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> reporting_pb2.ProfileStats:
        reads = await self.reports.user_reads(request.user)
        return reporting_pb2.ProfileStats(user=request.user, reads=reads)

    @translate_errors
    async def GetOperationTotals(
        self, request: reporting_pb2.GetOperationTotalsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> reporting_pb2.OperationTotals:
        return reporting_pb2.OperationTotals(**await self.reports.operation_totals())

    async def WatchTopProfiles(  # type: ignore[override]  # grpc.aio: written with context.write, not yielded
        self, request: reporting_pb2.WatchTopProfilesRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        async with stream_errors(context, "WatchTopProfiles") as progress:
            with self.limits.slot(self.limits.grpc_client(context)) as clock:
                async with contextlib.aclosing(self.leaderboard.watch(request.limit, clock)) as snapshots:
                    async for ranking, totals in snapshots:
                        await clock.send(
                            context.write(
                                reporting_pb2.WatchTopProfilesResponse(
                                    results=[
                                        reporting_pb2.ProfileScore(user=user, score=score) for user, score in ranking
                                    ],
                                    totals=reporting_pb2.OperationTotals(**dict(totals)),
                                )
                            )
                        )
                        clock.sent()
                        progress.sent += 1
