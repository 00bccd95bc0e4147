"""REST routes read from the `google.api.http` annotations of the services' descriptors.

The same annotations drive Envoy's gRPC-JSON transcoder or grpc-gateway, so the contract
lives in one place: protos/.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

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
