"""profilemesh's Python client: typed results and errors, retries that are safe by construction, and change
feeds that resume by themselves. Async (`AsyncProfileClient`, `AsyncReportingClient`, grpc.aio) and
blocking (`ProfileClient`, `ReportingClient`) share one implementation.

    async with AsyncProfileClient("ipv4:10.0.0.1:50051,10.0.0.2:50051") as profiles:
        await profiles.ensure_created("ana", {"email": "ana@example.com"})
        async for event in profiles.watch_events(resume_token=load(), on_token=save):
            print(event.user, event.type)
"""

from profilemesh.client.aio import AsyncProfileClient, AsyncReportingClient, EventWatch
from profilemesh.client.blocking import BlockingEventWatch, ProfileClient, ReportingClient
from profilemesh.client.channel import Tls
from profilemesh.client.errors import (
    ClusterUnavailable,
    DeadlineExceeded,
    EventsHistoryChanged,
    EventsTrimmed,
    FeedRestartRequired,
    InvalidArgument,
    InvalidResumeToken,
    NoReplica,
    OutcomeUnknown,
    PartitionUnavailable,
    PermissionDenied,
    ProfileExists,
    ProfilemeshError,
    ProfileNotFound,
    StreamEnded,
    TooManyRequests,
    TooManyStreams,
    Unavailable,
)
from profilemesh.client.policy import FeedPolicy, RetryPolicy
from profilemesh.client.types import BatchResult, Leaderboard, OperationTotals, Profile, ProfileEvent, ProfileScore

__all__ = [
    "AsyncProfileClient",
    "AsyncReportingClient",
    "BatchResult",
    "BlockingEventWatch",
    "ClusterUnavailable",
    "DeadlineExceeded",
    "EventWatch",
    "EventsHistoryChanged",
    "EventsTrimmed",
    "FeedPolicy",
    "FeedRestartRequired",
    "InvalidArgument",
    "InvalidResumeToken",
    "Leaderboard",
    "NoReplica",
    "OperationTotals",
    "OutcomeUnknown",
    "PartitionUnavailable",
    "PermissionDenied",
    "Profile",
    "ProfileClient",
    "ProfileEvent",
    "ProfileExists",
    "ProfileNotFound",
    "ProfileScore",
    "ProfilemeshError",
    "ReportingClient",
    "RetryPolicy",
    "StreamEnded",
    "Tls",
    "TooManyRequests",
    "TooManyStreams",
    "Unavailable",
]
