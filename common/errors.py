"""Every error profilemesh raises on purpose, in one module: what a caller is told, what the cluster did,
and why a process can't start.

- ServiceError and its subclasses carry a gRPC status and a stable reason. Domain code raises them;
  common/rpc/status.py turns them (and the storage errors below, through its table) into a gRPC status
  with `google.rpc` details, and the gateway renders those as JSON. A client branches on ErrorInfo's
  `reason` (stable, UPPER_SNAKE_CASE in the `profilemesh` domain), not on the message, which is for
  people and may be reworded.
- StorageError and its subclasses are what the storage layer (common/storage) raises for a failure of
  the cluster, in place of the cluster client's own exceptions, so nothing outside it imports redis.
- StartupError and its subclasses end a process before it serves, with a message that says what to change.

Nothing here needs the cluster client, so the gateway can use these classes without importing redis.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2

DOMAIN = "profilemesh"


class ServiceError(Exception):
    """An error with the status a caller gets for it. `reason` defaults to the class's."""

    code: ClassVar[grpc.StatusCode] = grpc.StatusCode.INTERNAL
    default_reason: ClassVar[str] = "INTERNAL"
    # Whether a stream that ends with it can go on from where it was (with its resume token).
    resumable: ClassVar[bool] = False

    def __init__(self, message: str, *, reason: str | None = None, metadata: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        self.metadata = dict(metadata or {})

    def details(self) -> list[Message]:
        """The google.rpc detail messages the status carries."""
        return [error_details_pb2.ErrorInfo(reason=self.reason, domain=DOMAIN, metadata=self.metadata)]

    def status(self) -> status_pb2.Status:
        """The whole google.rpc.Status: code, message and details."""
        packed = []
        for detail in self.details():
            holder = any_pb2.Any()
            holder.Pack(detail)
            packed.append(holder)
        return status_pb2.Status(code=self.code.value[0], message=self.message, details=packed)


class InvalidArgument(ServiceError):
    """The request is malformed; the message names the offending part, `field` the request field."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    default_reason = "INVALID_ARGUMENT"

    def __init__(self, message: str, *, field: str = "", reason: str | None = None) -> None:
        super().__init__(message, reason=reason)
        self.field = field

    def details(self) -> list[Message]:
        violation = error_details_pb2.BadRequest.FieldViolation(field=self.field, description=self.message)
        return [*super().details(), error_details_pb2.BadRequest(field_violations=[violation])]


class BadRequest(InvalidArgument):
    """The HTTP request can't become a gRPC request (the gateway); the message says why, `field` which field."""


class NotFound(ServiceError):
    code = grpc.StatusCode.NOT_FOUND
    default_reason = "PROFILE_NOT_FOUND"


class AlreadyExists(ServiceError):
    code = grpc.StatusCode.ALREADY_EXISTS
    default_reason = "PROFILE_EXISTS"


class Unavailable(ServiceError):
    """The cluster could not serve the request, or could not confirm it; the message and reason say which."""

    code = grpc.StatusCode.UNAVAILABLE
    default_reason = "CLUSTER_UNAVAILABLE"
    resumable = True


class DeadlineExceeded(ServiceError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED
    default_reason = "DEADLINE_EXCEEDED"


class TooManyRequests(ServiceError):
    """More calls in flight than this process takes; retry later."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    default_reason = "TOO_MANY_REQUESTS"


class Trimmed(ServiceError):
    """Events after the subscriber's position are gone from the stream (OUT_OF_RANGE)."""

    code = grpc.StatusCode.OUT_OF_RANGE
    default_reason = "EVENTS_TRIMMED"


class HistoryChanged(ServiceError):
    """The stream no longer holds the subscriber's position as it was: a failover lost events already sent
    (OUT_OF_RANGE). What the subscriber derived from them may describe changes that did not survive."""

    code = grpc.StatusCode.OUT_OF_RANGE
    default_reason = "EVENTS_HISTORY_CHANGED"


RETRY_STREAM_AFTER_S = 10  # what a refused stream client is told to wait: streams last minutes, so not sooner


class TooManyStreams(TooManyRequests):
    """Every stream slot of this process is taken, or the client's share of them (RESOURCE_EXHAUSTED,
    HTTP 429 with Retry-After); the reason says which."""

    default_reason = "TOO_MANY_STREAMS"

    def details(self) -> list[Message]:
        retry = error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=RETRY_STREAM_AFTER_S))
        return [*super().details(), retry]


class StreamEnded(ServiceError):
    """The server ends the stream, and the client should reconnect (UNAVAILABLE); the message says why."""

    code = grpc.StatusCode.UNAVAILABLE
    default_reason = "STREAM_ENDED"
    resumable = True


class StorageError(Exception):
    """The cluster failed under a command (the storage layer's translation of the client's exceptions)."""


class ClusterUnavailable(StorageError):
    """No node could serve the command: down, unreachable, failing over, or too slow to answer."""


class ClusterBusy(StorageError):
    """Every connection this process may open to the cluster is in use."""


class CommandFailed(StorageError):
    """The cluster answered the command with an error reply; `code` is the reply's first word (its error code)."""

    def __init__(self, message: str, code: str = "") -> None:
        super().__init__(message)
        self.code = code


class NoGroup(CommandFailed):
    """The stream or its consumer group does not exist (NOGROUP), e.g. after the cluster was flushed."""


class GroupExists(CommandFailed):
    """The consumer group being created is there already (BUSYGROUP)."""


class NotPermitted(CommandFailed):
    """The cluster's ACL refused this process's user the command or its keys (NOPERM)."""


class FunctionsNotLoaded(CommandFailed):
    """The node serving the command lacks this version's function library (a primary added, or flushed, since
    the admin step ran): waited out by loops, UNAVAILABLE to callers, until `profilemesh cluster migrate` runs."""


class StartupError(Exception):
    """The process can't start as it is set up; the message says what to change. Its __main__ exits with it."""


class ConfigError(StartupError, ValueError):
    """A setting has a value it can't take; the message names the variable and what it takes."""


class PartitionMismatch(StartupError):
    """The cluster was set up with another partition count; running on would misroute data."""


class CredentialsRefused(StartupError):
    """The cluster refused this process's user or password: no retry will help."""


class FunctionsMissing(StartupError):
    """A primary lacks this version's function library (never loaded, or another version's only): every call
    on its partitions would fail, and a service may not load code itself, so it refuses to start."""
