"""The allow-list's rules (common/rpc/tls.py): the longest prefix wins, `*` is any certificate, and a method
no rule covers is refused to everyone (default deny)."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from common.rpc.tls import AllowedClients, parse_allowed_clients
from localdev.system import MESH_ALLOWED_CLIENTS


def test_rules_longest_prefix_wildcard_and_default_deny() -> None:
    rules = AllowedClients(
        parse_allowed_clients("/a.S/=gateway;/a.S/Delete=gateway,ops;/grpc.health.v1.Health/=*")
    ).allowed
    assert rules("/a.S/Get") == {"gateway"}
    assert rules("/a.S/Delete") == {"gateway", "ops"}
    assert rules("/grpc.health.v1.Health/Check") == {"*"}
    assert rules("/a.T/Create") == frozenset()  # covered by no rule: nobody


def test_the_local_mesh_rules_name_every_method_of_the_services() -> None:
    from profilemesh.profile.v1 import profile_pb2
    from profilemesh.reporting.v1 import reporting_pb2

    allowed = AllowedClients(parse_allowed_clients(MESH_ALLOWED_CLIENTS)).allowed
    for module in (profile_pb2, reporting_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                assert allowed(f"/{service.full_name}/{method.name}") == {"gateway", "localdev"}, method.name


@pytest.mark.parametrize("text", ["a.S/=gateway", "/a.S/", "/a.S/=", "/a.S/= , "])
def test_a_malformed_rule_is_named(text: str) -> None:
    with pytest.raises(ValueError, match="is not /service/method=identity"):
        parse_allowed_clients(text)


def test_each_method_is_guarded_once_so_the_interceptors_before_it_wrap_it_once() -> None:
    """Shedding and observing cache their wrapper by the handler they are given: a fresh guarded handler per
    call would make them wrap every call again (and the in-flight gauge read only the latest call's count)."""

    async def behaviour(request: object, context: object) -> object:
        return request

    handler = grpc.unary_unary_rpc_method_handler(behaviour)

    async def continuation(details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        return handler

    class Details(grpc.HandlerCallDetails):
        method = "/profilemesh.profile.v1.ProfileService/GetProfile"
        invocation_metadata = ()

    guard = AllowedClients({"/profilemesh.profile.v1.ProfileService/": frozenset({"gateway"})})

    async def twice() -> tuple[object, object]:
        return await guard.intercept_service(continuation, Details()), await guard.intercept_service(
            continuation, Details()
        )

    first, second = asyncio.run(twice())
    assert first is second and first is not handler
