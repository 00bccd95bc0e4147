"""The gateway's route table and JSON <-> protobuf translation, without any server."""

from __future__ import annotations

import json
from typing import Any

import grpc
import pytest
from google.protobuf import json_format, message_factory
from hypothesis import given
from hypothesis import strategies as st
from multidict import MultiDict

from common.errors import BadRequest
from gateway.routes import Route, routes_from
from gateway.sse import _end, _frame, build_stream_request
from gateway.translate import build_request, render_response
from profilemesh.profile.v1 import profile_pb2
from profilemesh.reporting.v1 import reporting_pb2

ROUTES = {route.method.name: route for route in routes_from([profile_pb2.DESCRIPTOR, reporting_pb2.DESCRIPTOR])}


def route(name: str) -> Route:
    return ROUTES[name]


EXPECTED_ROUTES = {
    "CreateProfile": ("POST", "/profile/{user}", "fields", ""),
    "GetProfile": ("GET", "/profile/{user}", "", "fields"),
    "UpdateProfile": ("PATCH", "/profile/{user}", "fields", ""),
    "DeleteProfile": ("DELETE", "/profile/{user}", "", ""),
    "WatchProfileEvents": ("GET", "/profile/events", "", ""),
    "GetTopProfiles": ("GET", "/reporting/profileStats/{limit}", "", ""),
    "GetProfileStats": ("GET", "/reporting/users/{user}/stats", "", ""),
    "GetOperationTotals": ("GET", "/reporting/operationTotals", "", ""),
    "WatchTopProfiles": ("GET", "/reporting/profileStats/{limit}/stream", "", ""),
}


def test_the_route_table_is_the_protos_http_rules() -> None:
    assert {name: (r.http_method, r.path, r.body, r.response_body) for name, r in ROUTES.items()} == EXPECTED_ROUTES


@pytest.mark.parametrize("name", EXPECTED_ROUTES)
def test_each_route_knows_its_grpc_method(name: str) -> None:
    found = route(name)
    service = "ProfileService" if found.service.endswith("ProfileService") else "ReportingService"
    assert found.grpc_path == f"/profilemesh.{service.removesuffix('Service').lower()}.v1.{service}/{name}"
    assert found.request_class()().DESCRIPTOR is found.method.input_type
    assert [f.name for f in found.path_fields] == [v.strip("{}") for v in found.path.split("/") if v.startswith("{")]
    assert found.method.server_streaming == name.startswith("Watch")


def test_a_create_request_from_path_and_body() -> None:
    request = build_request(route("CreateProfile"), {"user": "ana"}, b'{"email": "ana@example.com", "name": "Ana"}')
    assert request == profile_pb2.CreateProfileRequest(user="ana", fields={"email": "ana@example.com", "name": "Ana"})


@pytest.mark.parametrize(("raw", "limit"), [("3", 3), ("1000", 1000), ("0", 0), ("-1", -1), ("+7", 7), ("007", 7)])
def test_integer_path_parameters(raw: str, limit: int) -> None:
    """Range is the service's to check; the gateway only parses, as strconv.ParseInt would."""
    assert build_request(route("GetTopProfiles"), {"limit": raw}, b"").limit == limit


@pytest.mark.parametrize("raw", ["abc", "1.5", "1e3", "0x10", "1_000", " 3", "٣", "99999999999", "1" * 5000, ""])
def test_non_integer_path_parameters_are_bad_requests_naming_the_field(raw: str) -> None:
    with pytest.raises(BadRequest) as caught:
        build_request(route("GetTopProfiles"), {"limit": raw}, b"")
    assert caught.value.message.startswith("limit must be an integer, got ")
    assert caught.value.field == "limit"
    assert len(caught.value.message) < 100


BAD_BODIES: dict[str, tuple[bytes, str, str]] = {
    "empty": (b"", "request body is empty", "fields"),
    "whitespace": (b" \n", "request body is empty", "fields"),
    "truncated": (b'{"a": ', "not valid JSON", "fields"),
    "not utf-8": (b'{"a": "\xff"}', "not valid JSON", "fields"),
    "array": (b"[]", "must be a JSON object, got list", "fields"),
    "number": (b"42", "must be a JSON object, got int", "fields"),
    "null": (b"null", "must be a JSON object, got NoneType", "fields"),
    "deep nesting": (b"[" * 60000, "nests too deeply", "fields"),
    "huge number": (b'{"a": ' + b"1" * 5000 + b"}", "a number is too long", "fields"),
    "int value": (b'{"age": 42}', "field 'age' must be a string, got int", "fields.age"),
    "null value": (b'{"a": null}', "field 'a' must be a string, got NoneType", "fields.a"),
    "object value": (b'{"a": {"b": "c"}}', "field 'a' must be a string, got dict", "fields.a"),
    "unpaired surrogate": (b'{"a": "\\ud800"}', "Unpaired surrogate", "fields"),
}


@pytest.mark.parametrize(("raw", "says", "field"), BAD_BODIES.values(), ids=BAD_BODIES.keys())
def test_bad_bodies(raw: bytes, says: str, field: str) -> None:
    for name in ("CreateProfile", "UpdateProfile"):
        with pytest.raises(BadRequest) as caught:
            build_request(route(name), {"user": "ana"}, raw)
        assert says in caught.value.message
        assert caught.value.field == field


def test_a_route_without_a_body_ignores_one() -> None:
    assert build_request(route("GetProfile"), {"user": "ana"}, b"not json") == profile_pb2.GetProfileRequest(user="ana")


def test_render_the_response_body_field_alone() -> None:
    rendered = render_response(route("GetProfile"), profile_pb2.Profile(user="ana", fields={"email": "a@x"}))
    assert rendered == {"email": "a@x"}


def test_render_64_bit_counts_as_numbers_and_zeros_in_full() -> None:
    response = reporting_pb2.GetTopProfilesResponse(
        results=[reporting_pb2.ProfileScore(user="ana", score=8), reporting_pb2.ProfileScore(user="bo", score=0)]
    )
    assert render_response(route("GetTopProfiles"), response) == {
        "results": [{"user": "ana", "score": 8}, {"user": "bo", "score": 0}]
    }
    totals = render_response(route("GetOperationTotals"), reporting_pb2.OperationTotals(create=2**40))
    assert totals == {"create": 2**40, "read": 0, "update": 0, "delete": 0}


def test_render_the_seed_messages() -> None:
    rendered = render_response(route("CreateProfile"), profile_pb2.CreateProfileResponse(message="Profile created"))
    assert rendered == {"message": "Profile created"}


def stream_request(name: str, path: dict[str, str], query: list[tuple[str, str]], last_id: str | None = None) -> Any:
    return build_stream_request(route(name), path, MultiDict(query), last_id)


def test_stream_query_parameters_fill_the_request() -> None:
    request = stream_request("WatchProfileEvents", {}, [("users", "ana"), ("users", "bo"), ("types", "delete")])
    assert request == profile_pb2.WatchProfileEventsRequest(users=["ana", "bo"], types=["delete"])
    assert stream_request("WatchProfileEvents", {}, [("resumeToken", "v1.x")]).resume_token == "v1.x"


def test_last_event_id_resumes_unless_the_query_says_otherwise() -> None:
    assert stream_request("WatchProfileEvents", {}, [], "v1.last").resume_token == "v1.last"
    assert stream_request("WatchProfileEvents", {}, [("resume_token", "v1.q")], "v1.last").resume_token == "v1.q"
    assert stream_request("WatchTopProfiles", {"limit": "3"}, [], "v1.last") == reporting_pb2.WatchTopProfilesRequest(
        limit=3
    )


@pytest.mark.parametrize(
    ("name", "path", "query", "says", "field"),
    [
        ("WatchProfileEvents", {}, [("user", "ana")], "unknown query parameter 'user'", "user"),
        ("WatchTopProfiles", {"limit": "3"}, [("limit", "4")], "unknown query parameter 'limit'", "limit"),
        ("WatchProfileEvents", {}, [("resume_token", "a"), ("resume_token", "b")], "given 2 times", "resume_token"),
        ("WatchTopProfiles", {"limit": "x"}, [], "limit must be an integer", "limit"),
    ],
)
def test_bad_stream_queries(
    name: str, path: dict[str, str], query: list[tuple[str, str]], says: str, field: str
) -> None:
    with pytest.raises(BadRequest) as caught:
        stream_request(name, path, query)
    assert says in caught.value.message and caught.value.field == field


def test_sse_frames() -> None:
    assert _frame({"a": 1}) == b'data: {"a":1}\n\n'
    assert _frame({"a": 1}, event="end", event_id="v1.t", retry_ms=1000) == (
        b'event: end\nid: v1.t\nretry: 1000\ndata: {"a":1}\n\n'
    )


def test_sse_end_frame_carries_status_and_details() -> None:
    frame = _end(grpc.StatusCode.RESOURCE_EXHAUSTED, "slow", "v1.t", [{"@type": "x", "reason": "R"}]).decode()
    lines = frame.strip().split("\n")
    assert lines[:3] == ["event: end", "id: v1.t", "retry: 1000"]
    assert json.loads(lines[3].removeprefix("data: ")) == {
        "code": "RESOURCE_EXHAUSTED",
        "status": 429,
        "message": "slow",
        "details": [{"@type": "x", "reason": "R"}],
    }


PLAIN = [
    message_factory.GetMessageClass(descriptor)
    for module in (profile_pb2, reporting_pb2)
    for descriptor in module.DESCRIPTOR.message_types_by_name.values()
    if all(
        field.type == field.TYPE_STRING or field.message_type is not None and field.message_type.GetOptions().map_entry
        for field in descriptor.fields
    )
]


@given(
    text=st.text(max_size=20),
    mapping=st.dictionaries(st.text(max_size=10), st.text(max_size=20), max_size=5),
    empty=st.booleans(),
)
def test_messages_of_strings_render_as_json_format_renders_them(
    text: str, mapping: dict[str, str], empty: bool
) -> None:
    """Profile and the other messages of strings and string maps take a direct path (gateway/translate.py): the
    same JSON as json_format's, with their fields set or left empty; those with repeated strings keep to
    json_format, and the same holds for them."""
    assert {kind.DESCRIPTOR.name for kind in PLAIN} >= {"Profile", "CreateProfileResponse", "DeleteProfileResponse"}
    whole = route("CreateProfile")  # a route answering with the whole message
    for kind in PLAIN:
        message = kind()
        for field in kind.DESCRIPTOR.fields:
            if empty:
                continue
            if field.message_type is not None:
                getattr(message, field.name).update(mapping)
            elif field.is_repeated:
                getattr(message, field.name).extend([text, text])
            else:
                setattr(message, field.name, text)
        expected = json_format.MessageToDict(message, always_print_fields_with_no_presence=True)
        # As the gateway sends it: json.dumps refuses what is not plain JSON (a protobuf container, say).
        assert json.dumps(render_response(whole, message), sort_keys=True) == json.dumps(expected, sort_keys=True)
