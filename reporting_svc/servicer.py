"""ReportingService over gRPC: translates between protobuf and the reporting domain."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import grpc

from common.errors import InvalidArgument
from common.server import translate_errors
from common.streams import CLUSTER_UNAVAILABLE, StreamEnded, StreamLimits, TooManyStreams
from profilemesh.reporting.v1 import reporting_pb2, reporting_pb2_grpc
from reporting_svc.reports import Reports
from reporting_svc.watch import Leaderboard

log = logging.getLogger(__name__)


class ReportingServicer(reporting_pb2_grpc.ReportingServiceServicer):
    def __init__(self, reports: Reports, leaderboard: Leaderboard, limits: StreamLimits) -> None:
        self.reports = reports
        self.leaderboard = leaderboard
        self.limits = limits

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

    async def WatchTopProfiles(self, request: reporting_pb2.WatchTopProfilesRequest, context: grpc.aio.ServicerContext):
        try:
            with self.limits.slot() as clock:
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
        except asyncio.CancelledError:
            log.info("WatchTopProfiles ended: cancelled by the client")
            raise
        except InvalidArgument as error:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        except TooManyStreams as error:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(error))
        except StreamEnded as error:
            log.info("WatchTopProfiles ended: %s", error)
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(error))
        except CLUSTER_UNAVAILABLE as error:
            log.warning("WatchTopProfiles: cluster unavailable: %r", error)
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the cluster is unavailable; reconnect")
