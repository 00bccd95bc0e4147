"""The errors a caller is told about: each class carries its gRPC status and a stable reason.

Domain code raises these; common/rpc/status.py turns them (and the cluster client's own exceptions,
through its table) into a gRPC status with `google.rpc` details, and the gateway renders those as JSON.
A client branches on ErrorInfo's `reason` (stable, UPPER_SNAKE_CASE in the `profilemesh` domain), not
on the message, which is for people and may be reworded. Nothing here needs the cluster client, so the
gateway can use these classes without importing redis.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2

from common.runtime.config import StartupError

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


class PartitionMismatch(RuntimeError):
    """The cluster was set up with another partition count; running on would misroute data."""


class FunctionsMissing(StartupError):
    """A primary lacks this version's function library (never loaded, or another version's only): every call
    on its partitions would fail, and a service may not load code itself, so it refuses to start."""
