"""gRPC status -> HTTP status the way grpc-gateway maps it, and the JSON body of every error.

An error body is `{"message": ..., "details": [...]}`: the message for people (the seed's contract),
and the status's `google.rpc` details for programs, each as proto3 JSON with its `@type`
(ErrorInfo's `reason` is the stable part, BadRequest's `fieldViolations` name the request fields).
"""

from __future__ import annotations

import contextlib
import logging
import math
from typing import Any

import grpc
from aiohttp import web
from google.protobuf import json_format
from google.rpc import status_pb2
from grpc_status import rpc_status

from common.errors import ServiceError

log = logging.getLogger(__name__)

HTTP_STATUS = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
}


def http_status(code: grpc.StatusCode) -> int:
    return HTTP_STATUS.get(code, 500)


def rendered_details(status: status_pb2.Status | None) -> list[dict[str, Any]]:
    """The status's details as JSON objects; one of a type this gateway doesn't know is left out."""
    rendered = []
    for detail in status.details if status is not None else ():
        try:
            rendered.append(json_format.MessageToDict(detail))
        except (TypeError, KeyError, json_format.Error) as error:  # a type not in the descriptor pool
            log.debug("left out a detail of type %s: %r", detail.type_url, error)
    return rendered


def rich_status(error: grpc.aio.AioRpcError) -> status_pb2.Status | None:
    """The google.rpc.Status a service sent with the error, if it sent one that agrees with the call's status."""
    try:
        return rpc_status.from_call(error)
    except ValueError as mismatch:
        log.debug("ignored the details of %s: %s", error.code().name, mismatch)
        return None


RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo"


def error_json(status: int, message: str, details: list[dict[str, Any]]) -> web.Response:
    """The JSON error; a RetryInfo detail (e.g. too many streams) becomes a Retry-After header too."""
    body: dict[str, Any] = {"message": message}
    headers = {}
    if details:
        body["details"] = details
        for detail in details:
            delay = detail.get("retryDelay") if detail.get("@type") == RETRY_INFO else None
            if isinstance(delay, str) and delay.endswith("s"):
                with contextlib.suppress(ValueError):
                    headers["Retry-After"] = str(max(1, math.ceil(float(delay[:-1]))))
    return web.json_response(body, status=status, headers=headers)


def service_error_response(error: ServiceError) -> web.Response:
    """The response for an error the gateway finds itself (a bad request, too many streams, ...)."""
    return error_json(http_status(error.code), error.message, rendered_details(error.status()))


def rpc_error_response(error: grpc.aio.AioRpcError) -> web.Response:
    """The response for a failed call: its HTTP status, message and details."""
    return error_json(
        http_status(error.code()), error.details() or error.code().name, rendered_details(rich_status(error))
    )
