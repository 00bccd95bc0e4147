"""REST routes read from the `google.api.http` annotations of the services' descriptors.

The same annotations drive Envoy's gRPC-JSON transcoder or grpc-gateway, so the contract
lives in one place: protos/. A Route also owns the rules the rule leaves to convention (its success
status, which request fields are query parameters) and makes its call on a channel: the handlers
(gateway/app.py, gateway/sse.py) and the OpenAPI document (gateway/openapi.py) read them from here.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import grpc
from google.api import annotations_pb2
from google.protobuf import message_factory
from google.protobuf.descriptor import FieldDescriptor, FileDescriptor, MethodDescriptor
from google.protobuf.message import Message

_VARIABLE = re.compile(r"\{([a-z_][a-z0-9_]*)\}")


@dataclass(frozen=True)
class Route:
    http_method: str  # GET, POST, ...
    path: str  # an aiohttp pattern, e.g. /profile/{user}; same syntax as the rule's simple variables
    method: MethodDescriptor
    body: str  # "", "*" or the request field the body maps to
    response_body: str  # "" (the whole response) or the response field returned as the body

    @property
    def grpc_path(self) -> str:
        return f"/{self.method.containing_service.full_name}/{self.method.name}"

    @property
    def service(self) -> str:
        return self.method.containing_service.full_name

    @property
    def path_fields(self) -> list[FieldDescriptor]:
        return [self.method.input_type.fields_by_name[name] for name in _VARIABLE.findall(self.path)]

    @property
    def success_status(self) -> int:
        """201 Created for a POST, else 200."""
        return 201 if self.http_method == "POST" else 200

    @property
    def query_fields(self) -> list[FieldDescriptor]:
        """The request fields taken from the query string (grpc-gateway's convention): without a body, the
        scalar fields outside the path, repeated ones as `?users=ana&users=bob`; with a body, none."""
        if self.body:
            return []
        in_path = {field.name for field in self.path_fields}
        return [f for f in self.method.input_type.fields if f.name not in in_path and f.message_type is None]

    def call_on(self, channel: grpc.aio.Channel) -> Any:
        """The callable that makes this route's RPC on `channel` (unary, or server-streaming for SSE)."""
        make = channel.unary_stream if self.method.server_streaming else channel.unary_unary
        return make(
            self.grpc_path,
            request_serializer=self.request_class().SerializeToString,
            response_deserializer=self.response_class().FromString,
        )

    def request_class(self) -> type[Message]:
        return message_factory.GetMessageClass(self.method.input_type)

    def response_class(self) -> type[Message]:
        return message_factory.GetMessageClass(self.method.output_type)


def routes_from(files: Iterable[FileDescriptor]) -> list[Route]:
    routes = []
    for file in files:
        for service in file.services_by_name.values():
            for method in service.methods:
                options = method.GetOptions()
                if not options.HasExtension(annotations_pb2.http):
                    continue
                rule = options.Extensions[annotations_pb2.http]
                verb = rule.WhichOneof("pattern")
                if verb == "custom":
                    http_method, path = rule.custom.kind.upper(), rule.custom.path
                else:
                    http_method, path = verb.upper(), getattr(rule, verb)
                routes.append(Route(http_method, path, method, rule.body, rule.response_body))
    return routes
