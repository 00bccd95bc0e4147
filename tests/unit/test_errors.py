"""The error table: which status, reason and details each error gets, and how the gateway renders them."""

from __future__ import annotations

import json

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from redis import exceptions as redis_errors

from common.errors import (
    AlreadyExists,
    BadRequest,
    DeadlineExceeded,
    HistoryChanged,
    InvalidArgument,
    NotFound,
    ServiceError,
    StreamEnded,
    TooManyRequests,
    TooManyStreams,
    Trimmed,
    Unavailable,
)
from common.rpc.status import CLUSTER_DOWN, as_service_error
from common.storage.errors import neutral
from gateway.errors import HTTP_STATUS, http_status, rendered_details, service_error_response

ERRORS: list[tuple[ServiceError, grpc.StatusCode, str, int]] = [
    (InvalidArgument("bad", field="user"), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", 400),
    (BadRequest("bad body", field="fields"), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", 400),
    (NotFound("Profile not found for x"), grpc.StatusCode.NOT_FOUND, "PROFILE_NOT_FOUND", 404),
    (AlreadyExists("Profile exists"), grpc.StatusCode.ALREADY_EXISTS, "PROFILE_EXISTS", 409),
    (Unavailable("down"), grpc.StatusCode.UNAVAILABLE, "CLUSTER_UNAVAILABLE", 503),
    (Unavailable("unsure", reason="OUTCOME_UNKNOWN"), grpc.StatusCode.UNAVAILABLE, "OUTCOME_UNKNOWN", 503),
    (DeadlineExceeded("late"), grpc.StatusCode.DEADLINE_EXCEEDED, "DEADLINE_EXCEEDED", 504),
    (TooManyRequests("busy"), grpc.StatusCode.RESOURCE_EXHAUSTED, "TOO_MANY_REQUESTS", 429),
    (TooManyStreams("full"), grpc.StatusCode.RESOURCE_EXHAUSTED, "TOO_MANY_STREAMS", 429),
    (StreamEnded("bye"), grpc.StatusCode.UNAVAILABLE, "STREAM_ENDED", 503),
    (Trimmed("gone"), grpc.StatusCode.OUT_OF_RANGE, "EVENTS_TRIMMED", 400),
    (HistoryChanged("lost"), grpc.StatusCode.OUT_OF_RANGE, "EVENTS_HISTORY_CHANGED", 400),
]


@pytest.mark.parametrize(("error", "code", "reason", "http"), ERRORS, ids=[type(e[0]).__name__ for e in ERRORS])
def test_each_error_carries_its_status_reason_and_http_status(
    error: ServiceError, code: grpc.StatusCode, reason: str, http: int
) -> None:
    assert (error.code, error.reason, http_status(error.code)) == (code, reason, http)
    assert as_service_error(error) is error
    status = error.status()
    assert (status.code, status.message) == (code.value[0], error.message)
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    assert (info.reason, info.domain) == (reason, "profilemesh")


@pytest.mark.parametrize("error", [e[0] for e in ERRORS], ids=[type(e[0]).__name__ for e in ERRORS])
def test_only_invalid_argument_carries_a_field_violation_and_only_too_many_streams_a_retry_delay(
    error: ServiceError,
) -> None:
    kinds = [detail.TypeName() for detail in error.status().details]
    if isinstance(error, InvalidArgument):
        assert kinds == ["google.rpc.ErrorInfo", "google.rpc.BadRequest"]
        bad_request = error_details_pb2.BadRequest()
        error.status().details[1].Unpack(bad_request)
        assert [(v.field, v.description) for v in bad_request.field_violations] == [(error.field, error.message)]
    elif isinstance(error, TooManyStreams):  # and how long to wait: Retry-After at the gateway
        assert kinds == ["google.rpc.ErrorInfo", "google.rpc.RetryInfo"]
    else:
        assert kinds == ["google.rpc.ErrorInfo"]


CLUSTER_EXCEPTIONS: list[tuple[BaseException, grpc.StatusCode]] = [
    (redis_errors.MaxConnectionsError("pool exhausted"), grpc.StatusCode.RESOURCE_EXHAUSTED),
    (redis_errors.ConnectionError("refused"), grpc.StatusCode.UNAVAILABLE),
    (redis_errors.TimeoutError("slow"), grpc.StatusCode.UNAVAILABLE),
    (redis_errors.ClusterDownError("CLUSTERDOWN"), grpc.StatusCode.UNAVAILABLE),
    (redis_errors.TryAgainError("TRYAGAIN"), grpc.StatusCode.UNAVAILABLE),
    (redis_errors.RedisClusterException("no node reachable"), grpc.StatusCode.UNAVAILABLE),
    (redis_errors.SlotNotCoveredError("slot 3"), grpc.StatusCode.UNAVAILABLE),
    (ConnectionResetError("reset"), grpc.StatusCode.UNAVAILABLE),
    (TimeoutError(), grpc.StatusCode.UNAVAILABLE),
    (TimeoutError(), grpc.StatusCode.UNAVAILABLE),
]


@pytest.mark.parametrize(("error", "code"), CLUSTER_EXCEPTIONS, ids=[type(e[0]).__name__ for e in CLUSTER_EXCEPTIONS])
def test_cluster_exceptions_are_looked_up_by_class(error: BaseException, code: grpc.StatusCode) -> None:
    """The storage layer's translation, then the status table: the most specific class wins at each step
    (MaxConnectionsError is a ConnectionError, yet RESOURCE_EXHAUSTED)."""
    found = as_service_error(neutral(error) or error)
    assert found is not None and found.code == code
    if code == grpc.StatusCode.UNAVAILABLE:
        assert (found.message, found.reason) == (CLUSTER_DOWN, "CLUSTER_UNAVAILABLE")


@pytest.mark.parametrize(
    "bug", [AttributeError("x"), TypeError("y"), KeyError("z"), ZeroDivisionError(), ValueError("v"), AssertionError()]
)
def test_a_bug_is_not_in_the_table(bug: BaseException) -> None:
    """Not mistaken for a cluster failure: gRPC answers UNKNOWN and logs the traceback."""
    assert as_service_error(bug) is None


def test_the_http_table_covers_every_status_code() -> None:
    assert set(HTTP_STATUS) == set(grpc.StatusCode)
    assert HTTP_STATUS[grpc.StatusCode.OK] == 200


def test_the_gateway_renders_details_as_proto3_json() -> None:
    response = service_error_response(BadRequest("user 'x y' is invalid", field="user"))
    assert response.status == 400
    assert response.text is not None
    assert json.loads(response.text) == {
        "message": "user 'x y' is invalid",
        "details": [
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "INVALID_ARGUMENT",
                "domain": "profilemesh",
            },
            {
                "@type": "type.googleapis.com/google.rpc.BadRequest",
                "fieldViolations": [{"field": "user", "description": "user 'x y' is invalid"}],
            },
        ],
    }


def test_a_detail_of_an_unknown_type_is_left_out() -> None:
    unknown = any_pb2.Any(type_url="type.googleapis.com/some.other.Detail", value=b"\x08\x01")
    known = any_pb2.Any()
    known.Pack(error_details_pb2.ErrorInfo(reason="R", domain="d"))
    rendered = rendered_details(status_pb2.Status(code=5, message="m", details=[unknown, known]))
    assert rendered == [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "R", "domain": "d"}]
    assert rendered_details(None) == []


def test_metadata_travels_in_error_info() -> None:
    error = StreamEnded("bye", metadata={"resume_token": "v1.abc"})
    info = error_details_pb2.ErrorInfo()
    error.status().details[0].Unpack(info)
    assert dict(info.metadata) == {"resume_token": "v1.abc"}
