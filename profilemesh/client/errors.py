"""Typed errors: each failed call becomes one exception class, chosen by the `google.rpc.ErrorInfo` reason.

The services put an ErrorInfo (domain `profilemesh`) in every status they send; its reason is stable, the
message is for people. Failures gRPC itself makes (a connection lost, a deadline on the client's side)
carry none: they are classified here by status code alone, and `reason` is empty.
"""

from __future__ import annotations

from typing import Any, ClassVar

import grpc
from google.rpc import error_details_pb2, status_pb2

DOMAIN = "profilemesh"
STATUS_DETAILS_KEY = "grpc-status-details-bin"


class ProfilemeshError(Exception):
    """A call failed. `code` is the gRPC status, `reason` the ErrorInfo reason ("" when gRPC made the error),
    `field` the request field a BadRequest names, `resume_token` where a stream may go on from."""

    default_reason: ClassVar[str] = ""

    def __init__(
        self,
        message: str,
        *,
        code: grpc.StatusCode = grpc.StatusCode.UNKNOWN,
        reason: str = "",
        field: str = "",
        metadata: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.reason = reason
        self.field = field
        self.metadata = dict(metadata or {})

    @property
    def resume_token(self) -> str:
        return self.metadata.get("resume_token", "")

    def __str__(self) -> str:
        reason = f" {self.reason}" if self.reason else ""
        return f"{self.code.name}{reason}: {self.message}"


class InvalidArgument(ProfilemeshError):
    """The request is malformed; `field` names the part (`user`, `fields.<name>`, `limit`, ...). Nothing ran."""


class InvalidResumeToken(InvalidArgument):
    """The resume token was refused (malformed, altered, from an older version or another deployment):
    start the feed again without one, after re-reading what you derive from it."""


class ProfileNotFound(ProfilemeshError):
    pass


class ProfileExists(ProfilemeshError):
    pass


class PermissionDenied(ProfilemeshError):
    """mTLS: this client's certificate may not call the method (PROFILEMESH_GRPC_ALLOWED_CLIENTS)."""


class Unavailable(ProfilemeshError):
    """Nothing served the call: no replica, no cluster, a partition's shard down, a connection lost."""


class ClusterUnavailable(Unavailable):
    pass


class PartitionUnavailable(Unavailable):
    """The shard holding the user's partition is down; other users are served. Nothing was changed."""


class NoReplica(Unavailable):
    """With replica durability, the shard can't confirm a change, so it refused it: nothing was changed."""


class OutcomeUnknown(Unavailable):
    """A change may or may not have happened (the cluster did not confirm it in time, or the connection to
    the replica serving it was lost mid-call). Retrying is safe: a create then answers ProfileExists, a
    delete ProfileNotFound; `ensure_created` / `ensure_deleted` do exactly that for you."""


class StreamEnded(Unavailable):
    """The server ended a stream (drain, SIGTERM, lifetime): reconnect with the resume token."""


class TooManyRequests(ProfilemeshError):
    """The server shed the call before running it; retry later."""


class TooManyStreams(TooManyRequests):
    pass


class DeadlineExceeded(ProfilemeshError):
    """The call's deadline passed; for a change, whether it happened is unknown (see OutcomeUnknown)."""


class FeedRestartRequired(ProfilemeshError):
    """The change feed can't go on from the token (OUT_OF_RANGE): events after it were trimmed
    (EVENTS_TRIMMED) or a failover lost events already sent (EVENTS_HISTORY_CHANGED). Start again
    without a token and re-read whatever you derive from the events; the token is never worth retrying."""


class EventsTrimmed(FeedRestartRequired):
    pass


class EventsHistoryChanged(FeedRestartRequired):
    pass


# ErrorInfo reason -> class. README "Errors" lists the reasons; tests/unit/test_client.py checks both agree.
BY_REASON: dict[str, type[ProfilemeshError]] = {
    "PROFILE_NOT_FOUND": ProfileNotFound,
    "PROFILE_EXISTS": ProfileExists,
    "INVALID_ARGUMENT": InvalidArgument,
    "CLUSTER_UNAVAILABLE": ClusterUnavailable,
    "PARTITION_UNAVAILABLE": PartitionUnavailable,
    "NO_REPLICA": NoReplica,
    "OUTCOME_UNKNOWN": OutcomeUnknown,
    "TOO_MANY_REQUESTS": TooManyRequests,
    "TOO_MANY_STREAMS": TooManyStreams,
    "TOO_MANY_STREAMS_FROM_CLIENT": TooManyStreams,
    "STREAM_ENDED": StreamEnded,
    "EVENTS_TRIMMED": EventsTrimmed,
    "EVENTS_HISTORY_CHANGED": EventsHistoryChanged,
    "DEADLINE_EXCEEDED": DeadlineExceeded,
}
# Without an ErrorInfo (gRPC's own failures), by status code.
# CANCELLED in an error (rather than asyncio's CancelledError) comes from the other side: a replica shutting
# down cancelled the call, which may or may not have run, as with a connection lost mid-call.
BY_CODE: dict[grpc.StatusCode, type[ProfilemeshError]] = {
    grpc.StatusCode.CANCELLED: Unavailable,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: ProfileNotFound,
    grpc.StatusCode.ALREADY_EXISTS: ProfileExists,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.RESOURCE_EXHAUSTED: TooManyRequests,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.OUT_OF_RANGE: FeedRestartRequired,
}


def _details(status: status_pb2.Status | None) -> tuple[str, dict[str, str], str]:
    """The ErrorInfo reason and metadata (domain profilemesh) and the BadRequest field of a status."""
    reason, metadata, field = "", {}, ""
    for packed in status.details if status is not None else ():
        if packed.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            packed.Unpack(info)
            if info.domain == DOMAIN:
                reason, metadata = info.reason, dict(info.metadata)
        elif packed.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            packed.Unpack(bad)
            if bad.field_violations:
                field = bad.field_violations[0].field
    return reason, metadata, field


def from_status(code: grpc.StatusCode, message: str, status: status_pb2.Status | None) -> ProfilemeshError:
    """The typed error for a failed call (or a batch member): by ErrorInfo reason, else by status code."""
    reason, metadata, field = _details(status)
    kind = BY_REASON.get(reason) or BY_CODE.get(code, ProfilemeshError)
    if field == "resume_token" and issubclass(kind, InvalidArgument):
        kind = InvalidResumeToken
    return kind(message, code=code, reason=reason, field=field, metadata=metadata)


_CODES = {code.value[0]: code for code in grpc.StatusCode}


def from_rpc_status(status: status_pb2.Status) -> ProfilemeshError:
    """A google.rpc.Status inside a reply (a BatchGetProfiles member's error) as its typed error."""
    code = _CODES.get(status.code, grpc.StatusCode.UNKNOWN)
    return from_status(code, status.message or code.name, status)


def from_rpc_error(error: grpc.RpcError) -> ProfilemeshError:
    """A failed call (grpc.aio.AioRpcError, or the blocking API's error, both a grpc.Call) as its typed error."""
    call: Any = error
    code: grpc.StatusCode = call.code()
    raw = next((value for key, value in call.trailing_metadata() or () if key == STATUS_DETAILS_KEY), None)
    status = status_pb2.Status.FromString(raw) if isinstance(raw, bytes) else None
    return from_status(code, call.details() or code.name, status)
