"""The REST API's OpenAPI 3.1 description, made at start-up from the same descriptors the routes come from.

Paths, methods, path and query parameters, request bodies and response shapes are read from the RPCs'
`google.api.http` rules and message descriptors, so an RPC with a rule (a new one included) is described
the moment it is served. What descriptors can't say comes from the code that enforces it: the input limits
(common/rpc/validation.py), the gateway's own answers (400 for bodies it can't read, 408, 413, 429) and which
gRPC codes each RPC returns, mapped to HTTP as the gateway maps them (gateway/translate.py).

Left out, on purpose: /healthz, /readyz (probes for a load balancer, no RPC behind them) and /dashboard
(an HTML page). The server-streaming routes answer `text/event-stream`: as OpenAPI 3.1 reads such a schema,
it describes each event, whose `data` is JSON (contentMediaType, contentSchema).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc
from aiohttp import web
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from common.rpc.validation import FIELD_PATTERN, MAX_FIELDS, MAX_LIMIT, MAX_USERS, MAX_VALUE_BYTES, USER_PATTERN
from common.storage.keys import EVENT_TYPES
from gateway.errors import http_status
from gateway.routes import Route

Schema = dict[str, Any]

# The codes each RPC's service answers with besides OK (the services' docs and tests); an RPC missing here
# is described with the codes a request-validating RPC usually returns.
RPC_CODES: dict[str, tuple[grpc.StatusCode, ...]] = {
    "CreateProfile": (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.ALREADY_EXISTS),
    "GetProfile": (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND),
    "UpdateProfile": (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND),
    "DeleteProfile": (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND),
    "GetTopProfiles": (grpc.StatusCode.INVALID_ARGUMENT,),
    "GetProfileStats": (grpc.StatusCode.INVALID_ARGUMENT,),
    "GetOperationTotals": (),
    "WatchProfileEvents": (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.OUT_OF_RANGE),
    "WatchTopProfiles": (grpc.StatusCode.INVALID_ARGUMENT,),
}
DEFAULT_CODES = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND)
# Every call can meet these: too many in flight or rate limited, no replica serving, the deadline.
COMMON_CODES = (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)

# Limits of request fields, by field name, as common/rpc/validation.py and the services enforce them.
USER_LIMITS: Schema = {"pattern": f"^{USER_PATTERN.pattern}$", "minLength": 1, "maxLength": 128}
FIELD_LIMITS: dict[str, Schema] = {
    "user": USER_LIMITS,
    "users": {"maxItems": MAX_USERS, "items": {"type": "string", **USER_LIMITS}},
    "types": {"items": {"type": "string", "enum": list(EVENT_TYPES)}},
    "resume_token": {"description": "the id of the last event received; one this service issued, else 400"},
    "limit": {"minimum": 1, "maximum": MAX_LIMIT},
    "fields": {
        "minProperties": 1,
        "maxProperties": MAX_FIELDS,
        "propertyNames": {"pattern": f"^{FIELD_PATTERN.pattern}$"},
        "additionalProperties": {
            "type": "string",
            "maxLength": MAX_VALUE_BYTES,
            "description": f"at most {MAX_VALUE_BYTES} bytes in UTF-8",
        },
    },
}

_SCALARS: dict[int, Schema] = {
    FieldDescriptor.TYPE_STRING: {"type": "string"},
    FieldDescriptor.TYPE_BYTES: {"type": "string", "contentEncoding": "base64"},
    FieldDescriptor.TYPE_BOOL: {"type": "boolean"},
    FieldDescriptor.TYPE_DOUBLE: {"type": "number"},
    FieldDescriptor.TYPE_FLOAT: {"type": "number"},
    # 64-bit integers are JSON numbers here, not proto3 JSON's strings (gateway/translate.py says why).
    **{
        t: {"type": "integer", "format": "int64"}
        for t in (
            FieldDescriptor.TYPE_INT64,
            FieldDescriptor.TYPE_UINT64,
            FieldDescriptor.TYPE_FIXED64,
            FieldDescriptor.TYPE_SFIXED64,
            FieldDescriptor.TYPE_SINT64,
        )
    },
    **{
        t: {"type": "integer", "format": "int32"}
        for t in (
            FieldDescriptor.TYPE_INT32,
            FieldDescriptor.TYPE_UINT32,
            FieldDescriptor.TYPE_FIXED32,
            FieldDescriptor.TYPE_SFIXED32,
            FieldDescriptor.TYPE_SINT32,
        )
    },
}
_WELL_KNOWN: dict[str, Schema] = {"google.protobuf.Timestamp": {"type": "string", "format": "date-time"}}

DETAILS = {
    "type": "array",
    "description": "the gRPC status's google.rpc details as proto3 JSON (ErrorInfo's reason is the stable part)",
    "items": {"type": "object", "required": ["@type"], "properties": {"@type": {"type": "string"}}},
}
ERROR = {
    "type": "object",
    "required": ["message"],
    "properties": {"message": {"type": "string", "minLength": 1, "description": "what was wrong"}, "details": DETAILS},
}
SERVER_ERROR = {
    "type": "object",
    "required": ["message", "request_id"],
    "properties": {
        "message": {"type": "string", "minLength": 1},
        "request_id": {"type": "string", "description": "the gateway's log has the details under this id"},
        "details": DETAILS,
    },
}
STREAM_END = {
    "type": "object",
    "required": ["code", "status", "message"],
    "properties": {
        "code": {"type": "string", "description": "the gRPC status the stream ended with, e.g. UNAVAILABLE"},
        "status": {"type": "integer", "description": "that status as HTTP"},
        "message": {"type": "string"},
    },
}
REQUEST_ID_HEADER = {
    "description": "the request's id: the client's X-Request-Id, or one the gateway made",
    "required": True,
    "schema": {"type": "string", "pattern": "^[A-Za-z0-9._:+/=-]{1,128}$"},
}
GATEWAY_ANSWERS = {
    400: "the request can't be read or is invalid; the message says what",
    404: "no such route, or no such profile",
    408: "the request body did not arrive in time",
    409: "the profile exists already",
    413: "the request body is too large",
    429: "too many requests: in flight at the gateway, from this client address, or open streams",
    503: "no replica of the service can serve it now; retry later",
    504: "the service did not answer within the gateway's deadline",
}


class _Schemas:
    """JSON Schemas of messages, each once under components/schemas, referred to by $ref."""

    def __init__(self) -> None:
        self.components: dict[str, Schema] = {"Error": ERROR, "ServerError": SERVER_ERROR, "StreamEnd": STREAM_END}

    def message(self, descriptor: Descriptor) -> Schema:
        if descriptor.full_name in _WELL_KNOWN:
            return dict(_WELL_KNOWN[descriptor.full_name])
        if descriptor.full_name not in self.components:
            self.components[descriptor.full_name] = {}  # placeholder: a recursive message refers to itself
            self.components[descriptor.full_name] = self.object(descriptor.fields)
        return {"$ref": f"#/components/schemas/{descriptor.full_name}"}

    def object(self, fields: Sequence[FieldDescriptor], limits: bool = False) -> Schema:
        """The JSON object of these fields as the gateway renders them: every field without presence."""
        return {
            "type": "object",
            "properties": {field.json_name: self.field(field, limits) for field in fields},
            "required": [field.json_name for field in fields if not field.has_presence],
            "additionalProperties": False,
        }

    def field(self, field: FieldDescriptor, limits: bool = False) -> Schema:
        schema = self._value(field)
        if limits and field.name in FIELD_LIMITS:
            schema = {**schema, **FIELD_LIMITS[field.name]}
        return schema

    def _value(self, field: FieldDescriptor) -> Schema:
        entry = field.message_type
        if entry is not None and entry.GetOptions().map_entry:
            return {"type": "object", "additionalProperties": self._single(entry.fields_by_name["value"])}
        if field.is_repeated:
            return {"type": "array", "items": self._single(field)}
        return self._single(field)

    def _single(self, field: FieldDescriptor) -> Schema:
        if field.message_type is not None:
            return self.message(field.message_type)
        if field.enum_type is not None:
            return {"type": "string", "enum": [value.name for value in field.enum_type.values]}
        return dict(_SCALARS[field.type])


def _error_response(status: int) -> Schema:
    schema = "ServerError" if status >= 500 else "Error"
    headers: dict[str, Any] = {"X-Request-Id": REQUEST_ID_HEADER}
    if status == 429:
        headers["Retry-After"] = {
            "description": "seconds to wait (the per-address rate limit, or a client's share of the streams)",
            "required": False,
            "schema": {"type": "string", "pattern": "^[0-9]+$"},
        }
    return {
        "description": GATEWAY_ANSWERS.get(status, "error"),
        "headers": headers,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
    }


def _sse_event(message: Schema) -> Schema:
    """One event of an SSE route (OpenAPI 3.1: a text/event-stream schema describes each event):
    a message as `data:` JSON, or the `end` event with the status the stream ended with."""

    def event(name: str, data: Schema) -> Schema:
        return {
            "type": "object",
            "required": ["data"],
            "properties": {
                "event": {"const": name},
                "id": {"type": "string"},
                "retry": {"type": "integer"},
                "data": {"type": "string", "contentMediaType": "application/json", "contentSchema": data},
            },
        }

    return {"oneOf": [event("message", message), event("end", {"$ref": "#/components/schemas/StreamEnd"})]}


def _excluded_values(route: Route, routes: list[Route], name: str) -> list[str]:
    """Values of a path variable that select another route: GET /profile/events is the change feed,
    not the profile of a user called "events"."""
    segments = route.path.split("/")
    position = segments.index("{" + name + "}")
    taken = []
    for other in routes:
        theirs = other.path.split("/")
        if other is route or other.http_method != route.http_method or len(theirs) != len(segments):
            continue
        same_elsewhere = all(a == b or i == position for i, (a, b) in enumerate(zip(segments, theirs, strict=True)))
        if same_elsewhere and not theirs[position].startswith("{"):
            taken.append(theirs[position])
    return taken


def _operation(route: Route, routes: list[Route], schemas: _Schemas) -> Schema:
    method = route.method
    operation: Schema = {
        "operationId": method.name,
        "tags": [method.containing_service.name],
        "description": f"gRPC `{route.grpc_path}`",
        "parameters": _parameters(route, routes, schemas),
    }
    if route.body:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": _body(route, schemas)}},
        }
    if method.server_streaming:
        operation["description"] += (
            " as Server-Sent Events: each message as `data:` JSON, its resume token as `id:`,"
            " `Last-Event-ID` taken as resume_token, `: keepalive` comments, and `event: end` when it ends."
        )
        operation["parameters"].append(
            {"name": "Last-Event-ID", "in": "header", "required": False, "schema": {"type": "string"}}
        )
    statuses = _error_statuses(route)
    operation["responses"] = {
        str(route.success_status): _success(route, schemas),
        **{str(status): _error_response(status) for status in sorted(statuses)},
    }
    return operation


def _parameters(route: Route, routes: list[Route], schemas: _Schemas) -> list[Schema]:
    """The path parameters, then the query parameters (Route.query_fields), with their limits."""
    parameters: list[Schema] = []
    for field in route.path_fields:
        schema = schemas.field(field, limits=True)
        parameter = {"name": field.name, "in": "path", "required": True, "schema": schema}
        excluded = _excluded_values(route, routes, field.name)
        if excluded:  # OpenAPI matches a concrete path before a templated one; said here for people
            parameter["description"] = f"not {', '.join(excluded)}: {route.http_method} of that path is another route"
        parameters.append(parameter)
    for field in route.query_fields:
        parameters.append(
            {
                "name": field.name,
                "in": "query",
                "required": False,
                "schema": schemas.field(field, limits=True),
                **({"style": "form", "explode": True} if field.is_repeated else {}),
            }
        )
    return parameters


def _body(route: Route, schemas: _Schemas) -> Schema:
    """The request body's schema: the request's fields outside the path, or the one field the body maps to."""
    if route.body == "*":
        in_path = {field.name for field in route.path_fields}
        return schemas.object([f for f in route.method.input_type.fields if f.name not in in_path], limits=True)
    return schemas.field(route.method.input_type.fields_by_name[route.body], limits=True)


def _success(route: Route, schemas: _Schemas) -> Schema:
    """The success response: the response message (or its response_body field) as JSON, or as SSE events."""
    output = route.method.output_type
    success = schemas.message(output)
    if route.response_body:
        success = schemas.field(output.fields_by_name[route.response_body])
    headers = {"X-Request-Id": REQUEST_ID_HEADER}
    if route.method.server_streaming:
        return {
            "description": "the stream: its messages, then an `end` event",
            "headers": headers,
            "content": {"text/event-stream": {"schema": _sse_event(success)}},
        }
    return {"description": "OK", "headers": headers, "content": {"application/json": {"schema": success}}}


def _error_statuses(route: Route) -> set[int]:
    """The HTTP errors a route can answer: the gateway's own, and its RPC's gRPC codes as the gateway maps them."""
    statuses = {400}  # any route: an invalid X-Request-Id
    if route.body:
        statuses |= {408, 413}
    codes = (*RPC_CODES.get(route.method.name, DEFAULT_CODES), *COMMON_CODES)
    return statuses | {http_status(code) for code in codes}


def document(routes: list[Route]) -> Schema:
    schemas = _Schemas()
    paths: dict[str, Schema] = {}
    for route in routes:
        paths.setdefault(route.path, {})[route.http_method.lower()] = _operation(route, routes, schemas)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "profilemesh REST API",
            "version": "1",
            "description": (
                "Generated by the gateway from the services' google.api.http rules (protos/). Errors are JSON with"
                " a `message` naming what was wrong; a 5xx carries the `request_id` under which the gateway"
                " logged the details. Not described: /healthz and /readyz (probes), /dashboard (an HTML page)."
            ),
        },
        "paths": dict(sorted(paths.items())),
        "components": {"schemas": schemas.components},
    }


def handler(routes: list[Route]) -> Callable[[web.Request], Awaitable[web.Response]]:
    """GET /openapi.json: the description, made once."""
    body = json.dumps(document(routes), indent=1).encode()

    async def openapi_json(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json")

    return openapi_json
