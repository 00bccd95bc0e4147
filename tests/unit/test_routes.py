"""A Route's own rules (gateway/routes.py): its success status, which request fields are query parameters, and its
call; the unary handlers, the SSE routes and the OpenAPI document all read them from the Route, so they agree."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from multidict import MultiDict

from common.errors import BadRequest
from common.runtime.config import Settings
from gateway import openapi
from gateway.app import answer
from gateway.routes import Route, routes_from
from gateway.sse import build_stream_request
from gateway.upstreams import Upstreams
from profilemesh.profile.v1 import profile_pb2
from profilemesh.reporting.v1 import reporting_pb2

ROUTES = {route.method.name: route for route in routes_from([profile_pb2.DESCRIPTOR, reporting_pb2.DESCRIPTOR])}
DOCUMENT = openapi.document(list(ROUTES.values()))

# name: (success status, query fields)
EXPECTED = {
    "CreateProfile": (201, []),
    "GetProfile": (200, []),
    "UpdateProfile": (200, []),
    "DeleteProfile": (200, []),
    "WatchProfileEvents": (200, ["resume_token", "users", "types"]),
    "GetTopProfiles": (200, []),
    "GetProfileStats": (200, []),
    "GetOperationTotals": (200, []),
    "WatchTopProfiles": (200, []),
}


def _operation(route: Route) -> dict[str, Any]:
    operation: dict[str, Any] = DOCUMENT["paths"][route.path][route.http_method.lower()]
    return operation


def test_each_routes_success_status_and_query_fields() -> None:
    found = {name: (r.success_status, [f.name for f in r.query_fields]) for name, r in ROUTES.items()}
    assert found == EXPECTED


@pytest.mark.parametrize("name", EXPECTED)
def test_openapi_describes_the_routes_own_status_and_query_fields(name: str) -> None:
    route = ROUTES[name]
    operation = _operation(route)
    assert [status for status in operation["responses"] if status < "400"] == [str(route.success_status)]
    query = [parameter["name"] for parameter in operation["parameters"] if parameter["in"] == "query"]
    assert query == [field.name for field in route.query_fields]


@pytest.mark.parametrize("name", [name for name, route in ROUTES.items() if not route.method.server_streaming])
def test_a_unary_handler_answers_with_the_routes_success_status(name: str) -> None:
    route = ROUTES[name]
    assert answer(route, route.response_class()()).status == route.success_status


@pytest.mark.parametrize("name", [name for name, route in ROUTES.items() if route.method.server_streaming])
def test_an_sse_route_takes_exactly_its_query_fields(name: str) -> None:
    route = ROUTES[name]
    path = {field.name: "3" for field in route.path_fields}
    values = {"resume_token": "0-1", "users": "ana", "types": "delete"}
    request = build_stream_request(route, path, MultiDict({f.name: values[f.name] for f in route.query_fields}), None)
    for field in route.query_fields:
        taken = getattr(request, field.name)
        assert (list(taken) if field.is_repeated else taken) in ([values[field.name]], values[field.name])
    others = [f.name for f in route.method.input_type.fields if f not in route.query_fields]
    for other in [*others, "unknown"]:
        with pytest.raises(BadRequest) as refused:
            build_stream_request(route, path, MultiDict({other: "1"}), None)
        takes = ", ".join(field.name for field in route.query_fields) or "none"
        assert str(refused.value).endswith(f"this path takes {takes}")


async def _calls() -> dict[str, Any]:
    # Channels connect on their first call only: none is made here.
    upstreams = Upstreams({route.service: "127.0.0.1:1" for route in ROUTES.values()}, Settings())
    try:
        return upstreams.calls(ROUTES.values())
    finally:
        await upstreams.close()


def test_each_route_makes_its_call_unary_or_streaming() -> None:
    calls = asyncio.run(_calls())
    assert set(calls) == {route.grpc_path for route in ROUTES.values()}
    for route in ROUTES.values():
        kind = grpc.aio.UnaryStreamMultiCallable if route.method.server_streaming else grpc.aio.UnaryUnaryMultiCallable
        assert isinstance(calls[route.grpc_path], kind), route.grpc_path
