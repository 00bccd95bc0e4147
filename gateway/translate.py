"""JSON <-> protobuf for the gateway: requests from paths and bodies, responses as grpc-gateway renders them."""

from __future__ import annotations

import functools
import json
import re
from typing import Any

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from common.errors import BadRequest
from gateway.routes import Route

INTEGER_TYPES = {
    FieldDescriptor.CPPTYPE_INT32,
    FieldDescriptor.CPPTYPE_INT64,
    FieldDescriptor.CPPTYPE_UINT32,
    FieldDescriptor.CPPTYPE_UINT64,
}
_64_BIT = {FieldDescriptor.CPPTYPE_INT64, FieldDescriptor.CPPTYPE_UINT64}
# int() alone would also take "1_000", " 3" and non-ASCII digits; grpc-gateway (strconv.ParseInt) takes none.
DECIMAL = re.compile(r"[+-]?[0-9]+")


# A field's descriptor: the stubs type protobuf's C (upb) and Python descriptors apart; both behave alike.
Field = Any


def _is_string_map(field: Field) -> bool:
    entry = field.message_type
    return (
        entry is not None
        and entry.GetOptions().map_entry
        and entry.fields_by_name["key"].type == FieldDescriptor.TYPE_STRING
        and entry.fields_by_name["value"].type == FieldDescriptor.TYPE_STRING
    )


def build_request(route: Route, path_params: dict[str, str], body: bytes) -> Message:
    request = route.request_class()()
    for field in route.path_fields:
        raw = path_params[field.name]
        if field.cpp_type in INTEGER_TYPES:
            try:
                if not DECIMAL.fullmatch(raw):
                    raise ValueError(raw)
                setattr(request, field.name, int(raw, 10))
            except (ValueError, OverflowError):  # OverflowError: out of the field's range
                raise BadRequest(f"{field.name} must be an integer, got {raw[:40]!r}", field=field.name) from None
        else:
            setattr(request, field.name, raw)
    if route.body:
        _parse_body(route, request, body)
    return request


def _parse_body(route: Route, request: Message, body: bytes) -> None:
    # The request field the body is (none when it is the whole request), for the errors' field violations.
    where = "" if route.body == "*" else route.body
    if not body.strip():
        raise BadRequest("request body is empty: send a JSON object", field=where)
    try:
        data = json.loads(body, object_pairs_hook=_without_duplicates)
    except BadRequest:
        raise
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BadRequest(f"request body is not valid JSON: {error}", field=where) from None
    except (ValueError, RecursionError):  # a number of over 4300 digits; nesting deeper than the parser's stack
        raise BadRequest(
            "request body is not acceptable JSON: a number is too long or it nests too deeply", field=where
        ) from None
    if not isinstance(data, dict):
        raise BadRequest(f"request body must be a JSON object, got {type(data).__name__}", field=where)
    if route.body == "*":
        target = data
    else:
        field = request.DESCRIPTOR.fields_by_name[route.body]
        if _is_string_map(field):
            for name, value in data.items():
                if not isinstance(value, str):
                    raise BadRequest(
                        f"field {name[:64]!r} must be a string, got {type(value).__name__}",
                        field=f"{field.name}.{name[:64]}",
                    )
        target = {field.json_name: data}
    try:
        json_format.ParseDict(target, request)
    except json_format.ParseError as error:
        raise BadRequest(f"request body does not fit {request.DESCRIPTOR.name}: {error}", field=where) from None


def _without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object that names a key twice is refused: parsers disagree on which value wins."""
    data: dict[str, Any] = {}
    for name, value in pairs:
        if name in data:
            raise BadRequest(f"request body names {name[:64]!r} more than once")
        data[name] = value
    return data


def render_response(route: Route, response: Message) -> Any:
    plain = _plain_fields(response.DESCRIPTOR)
    if plain is not None:  # GetProfile's and the changes' answers: the same JSON at a third of the cost
        data = {
            json_name: dict(getattr(response, name)) if is_map else getattr(response, name)
            for name, json_name, is_map in plain
        }
    else:
        data = json_format.MessageToDict(response, always_print_fields_with_no_presence=True)
        _integers_as_numbers(response, data)
    if route.response_body:
        return data[response.DESCRIPTOR.fields_by_name[route.response_body].json_name]
    return data


PlainField = tuple[str, str, bool]  # the field's name, its JSON name, whether it is a map


@functools.cache
def _plain_fields(descriptor: Descriptor) -> tuple[PlainField, ...] | None:
    """The fields of a message made only of strings and maps of strings to strings, whose proto3 JSON is those
    values as they are (json_format spends most of its time finding that out again for every message); None
    for any other message."""
    plain = []
    for field in descriptor.fields:
        if field.has_presence or field.message_type is None and field.is_repeated:
            return None
        if field.message_type is None:
            if field.type != FieldDescriptor.TYPE_STRING:
                return None
            plain.append((field.name, field.json_name, False))
        elif field.message_type.GetOptions().map_entry and all(
            part.type == FieldDescriptor.TYPE_STRING for part in field.message_type.fields
        ):
            plain.append((field.name, field.json_name, True))
        else:
            return None
    return tuple(plain)


def _integers_as_numbers(message: Message, data: dict[str, Any]) -> None:
    """Undo proto3 JSON's quoting of 64-bit integers: our counts are far below 2**53."""
    for field in message.DESCRIPTOR.fields:
        if field.json_name not in data:
            continue
        value = data[field.json_name]
        repeated = field.is_repeated
        if field.cpp_type in _64_BIT:
            data[field.json_name] = [int(v) for v in value] if repeated else int(value)
        elif field.message_type is not None and not field.message_type.GetOptions().map_entry:
            children = getattr(message, field.name)
            for child, child_data in zip(children, value, strict=True) if repeated else [(children, value)]:
                _integers_as_numbers(child, child_data)
