"""The servicers in-process, behind a real gRPC server and channel, where no cluster is needed.

Bad requests are refused before anything reaches the cluster, so the cluster URL points at a port
nothing listens on; the last tests use exactly that to see a cluster failure become UNAVAILABLE.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import grpc
import pytest

from common.rpc.streams import StreamLimits
from common.runtime.config import Settings
from common.storage.cluster import Cluster
from localdev.ports import free_ports
from profile_svc.events_feed import EventsFeed
from profile_svc.profiles import Profiles
from profile_svc.servicer import ProfileServicer
from profilemesh.profile.v1 import profile_pb2, profile_pb2_grpc
from profilemesh.reporting.v1 import reporting_pb2, reporting_pb2_grpc
from reporting_svc.reports import Reports
from reporting_svc.servicer import ReportingServicer
from reporting_svc.watch import Leaderboard
from tests.helpers import status_details

TIMEOUT_S = 5


class Servers:
    def __init__(self, channel: grpc.aio.Channel, limits: StreamLimits) -> None:
        self.profile = profile_pb2_grpc.ProfileServiceStub(channel)
        self.reporting = reporting_pb2_grpc.ReportingServiceStub(channel)
        self.limits = limits


@asynccontextmanager
async def servers() -> AsyncIterator[Servers]:
    grpc_port, nothing_there = free_ports(2)
    settings = Settings(redis_url=f"redis://127.0.0.1:{nothing_there}", redis_timeout_ms=200, partitions=4)
    cluster = Cluster(settings)
    limits = StreamLimits(settings.streams())
    server = grpc.aio.server()
    profile_pb2_grpc.add_ProfileServiceServicer_to_server(
        ProfileServicer(Profiles(cluster, 4), EventsFeed(cluster, 4, settings.stream_queue), limits), server
    )
    reports = Reports(cluster, 4)
    reporting_pb2_grpc.add_ReportingServiceServicer_to_server(
        ReportingServicer(reports, Leaderboard(reports, settings.watch_interval_ms), limits), server
    )
    server.add_insecure_port(f"127.0.0.1:{grpc_port}")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            yield Servers(channel, limits)
    finally:
        await server.stop(None)
        await cluster.close()


async def failure(call: Callable[[], Awaitable[Any]]) -> tuple[grpc.StatusCode, str, dict[str, Any]]:
    """The code, message and google.rpc details (ErrorInfo, BadRequest) of a call that must fail."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call()
    return caught.value.code(), caught.value.details() or "", status_details(caught.value)


async def first_message(stream: grpc.aio.UnaryStreamCall) -> Any:
    return await stream.read()


INVALID: dict[str, tuple[Callable[[Servers], Awaitable[Any]], str, str]] = {
    "create: user": (
        lambda s: s.profile.CreateProfile(profile_pb2.CreateProfileRequest(user="-x", fields={"a": "b"})),
        "user",
        "user '-x' is invalid",
    ),
    "create: no fields": (
        lambda s: s.profile.CreateProfile(profile_pb2.CreateProfileRequest(user="ana")),
        "fields",
        "fields must not be empty",
    ),
    "update: field name": (
        lambda s: s.profile.UpdateProfile(profile_pb2.UpdateProfileRequest(user="ana", fields={"a b": "c"})),
        "fields",
        "field name 'a b' is invalid",
    ),
    "get: user": (lambda s: s.profile.GetProfile(profile_pb2.GetProfileRequest(user="")), "user", "user '' is invalid"),
    "delete: user": (
        lambda s: s.profile.DeleteProfile(profile_pb2.DeleteProfileRequest(user="a/b")),
        "user",
        "user 'a/b' is invalid",
    ),
    "top: limit": (
        lambda s: s.reporting.GetTopProfiles(reporting_pb2.GetTopProfilesRequest(limit=1001)),
        "limit",
        "limit must be an integer from 1 to 1000, got 1001",
    ),
    "stats: user": (
        lambda s: s.reporting.GetProfileStats(reporting_pb2.GetProfileStatsRequest(user="a b")),
        "user",
        "user 'a b' is invalid",
    ),
    "watch events: token": (
        lambda s: first_message(s.profile.WatchProfileEvents(profile_pb2.WatchProfileEventsRequest(resume_token="x"))),
        "resume_token",
        "resume_token is not a token this service issued",
    ),
    "watch events: type": (
        lambda s: first_message(s.profile.WatchProfileEvents(profile_pb2.WatchProfileEventsRequest(types=["purge"]))),
        "types",
        "unknown event type 'purge'",
    ),
    "watch events: user": (
        lambda s: first_message(s.profile.WatchProfileEvents(profile_pb2.WatchProfileEventsRequest(users=["ok", ""]))),
        "users",
        "user '' is invalid",
    ),
    "watch top: limit": (
        lambda s: first_message(s.reporting.WatchTopProfiles(reporting_pb2.WatchTopProfilesRequest(limit=0))),
        "limit",
        "limit must be an integer from 1 to 1000, got 0",
    ),
}


@pytest.mark.parametrize(("call", "field", "says"), INVALID.values(), ids=INVALID.keys())
def test_invalid_requests_name_the_field(call: Callable[[Servers], Awaitable[Any]], field: str, says: str) -> None:
    async def scenario() -> None:
        async with servers() as running:
            code, message, details = await failure(lambda: call(running))
            assert code == grpc.StatusCode.INVALID_ARGUMENT and message.startswith(says)
            assert details["ErrorInfo"].reason == "INVALID_ARGUMENT"
            assert [(v.field, v.description) for v in details["BadRequest"].field_violations] == [(field, message)]

    asyncio.run(scenario())


def test_a_draining_server_ends_new_streams_with_a_reason() -> None:
    async def scenario() -> None:
        async with servers() as running:
            running.limits.drain()
            code, message, details = await failure(
                lambda: first_message(
                    running.reporting.WatchTopProfiles(reporting_pb2.WatchTopProfilesRequest(limit=3))
                )
            )
            assert (code, message) == (grpc.StatusCode.UNAVAILABLE, "the server is shutting down; reconnect")
            assert details["ErrorInfo"].reason == "STREAM_ENDED" and "BadRequest" not in details

    asyncio.run(scenario())


def test_a_cluster_nothing_answers_for_is_unavailable() -> None:
    """Unary calls that reach the cluster client: UNAVAILABLE with the reason a client retries on."""

    async def scenario() -> None:
        async with servers() as running:
            code, message, details = await failure(
                lambda: running.reporting.GetOperationTotals(
                    reporting_pb2.GetOperationTotalsRequest(), timeout=TIMEOUT_S
                )
            )
            assert (code, message) == (grpc.StatusCode.UNAVAILABLE, "the cluster is unavailable; retry later")
            assert details["ErrorInfo"].reason == "CLUSTER_UNAVAILABLE"

    asyncio.run(scenario())
