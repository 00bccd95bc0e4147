"""gRPC TLS and mutual TLS from the PROFILEMESH_GRPC_* settings: one place for servers and clients.

A component's certificate is what it serves and what it presents as a client. With a CA set, servers
require a client certificate that CA signed, and clients accept only servers it signed. Without a
certificate everything is plaintext, as in `make run`. The mesh's CA signs nothing else (not the cluster's
certificates), so no certificate made for another purpose is a valid gRPC client or server. With
PROFILEMESH_GRPC_ALLOWED_CLIENTS, every method is checked against the client's identity (AllowedClients).
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import grpc

from common.rpc.interceptors import Handler, WrappingInterceptor
from common.runtime.config import Settings


def _read(path: str, setting: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise SystemExit(f"{setting}: cannot read {path}: {error.strerror}") from None


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS for a server (None: plaintext); with a CA, clients must present a certificate it signed."""
    if not settings.grpc_cert_file:
        return None
    pair = (
        _read(settings.grpc_key_file, "PROFILEMESH_GRPC_KEY_FILE"),
        _read(settings.grpc_cert_file, "PROFILEMESH_GRPC_CERT_FILE"),
    )
    ca = _read(settings.grpc_ca_file, "PROFILEMESH_GRPC_CA_FILE") if settings.grpc_ca_file else None
    return grpc.ssl_server_credentials([pair], root_certificates=ca, require_client_auth=ca is not None)


def channel_credentials(settings: Settings) -> grpc.ChannelCredentials | None:
    """TLS for a client (None: plaintext): verify servers with the CA, present our certificate."""
    if not settings.grpc_ca_file:
        return None
    ca = _read(settings.grpc_ca_file, "PROFILEMESH_GRPC_CA_FILE")
    if not settings.grpc_cert_file:
        return grpc.ssl_channel_credentials(root_certificates=ca)
    return grpc.ssl_channel_credentials(
        root_certificates=ca,
        private_key=_read(settings.grpc_key_file, "PROFILEMESH_GRPC_KEY_FILE"),
        certificate_chain=_read(settings.grpc_cert_file, "PROFILEMESH_GRPC_CERT_FILE"),
    )


def aio_channel(target: str, settings: Settings, options: Sequence[tuple[str, Any]] = ()) -> grpc.aio.Channel:
    credentials = channel_credentials(settings)
    if credentials is None:
        return grpc.aio.insecure_channel(target, options=list(options))
    return grpc.aio.secure_channel(target, credentials, options=list(options))


def sync_channel(target: str, settings: Settings, options: Sequence[tuple[str, Any]] = ()) -> grpc.Channel:
    credentials = channel_credentials(settings)
    if credentials is None:
        return grpc.insecure_channel(target, options=list(options))
    return grpc.secure_channel(target, credentials, options=list(options))


ANY_CLIENT = "*"  # in a rule: any client certificate the CA signed


def parse_allowed_clients(text: str) -> dict[str, frozenset[str]]:
    """`/pkg.Service/Method=gateway,localdev;/pkg.Service/=gateway;/grpc.health.v1.Health/=*`: method or
    service prefix -> identities (`*`: any the CA signed).

    Raises ValueError naming the rule that is not of that form.
    """
    rules: dict[str, frozenset[str]] = {}
    for rule in filter(None, (part.strip() for part in text.split(";"))):
        prefix, sep, names = rule.partition("=")
        identities = frozenset(name.strip() for name in names.split(",") if name.strip())
        if not sep or not prefix.startswith("/") or not identities:
            raise ValueError(f"PROFILEMESH_GRPC_ALLOWED_CLIENTS: {rule!r} is not /service/method=identity,identity")
        rules[prefix.strip()] = identities
    return rules


def peer_identities(context: grpc.aio.ServicerContext[Any, Any]) -> set[str]:
    """The verified client certificate's common name and subject alternative names."""
    auth = context.auth_context()
    values = [*auth.get("x509_common_name", []), *auth.get("x509_subject_alternative_name", [])]
    return {value.decode() if isinstance(value, bytes) else str(value) for value in values}


class AllowedClients(WrappingInterceptor):
    """Every method is checked: only the identities of the rule that covers it (the longest prefix wins) may
    call it, and a method no rule covers is refused to everyone (default deny: a new RPC, a mutation above
    all, is closed until a rule names who may call it). Refusals are PERMISSION_DENIED."""

    def __init__(self, rules: dict[str, frozenset[str]]) -> None:
        super().__init__()
        self.rules = rules

    def allowed(self, method: str) -> frozenset[str]:
        matching = [prefix for prefix in self.rules if method.startswith(prefix)]
        return self.rules[max(matching, key=len)] if matching else frozenset()

    def _wrap(self, method: str, handler: Handler) -> Handler:
        allowed = self.allowed(method)

        async def refuse_strangers(context: grpc.aio.ServicerContext[Any, Any]) -> None:
            identities = peer_identities(context)
            if ANY_CLIENT in allowed and identities:
                return
            if not identities & allowed:
                names = list(context.auth_context().get("x509_common_name", []))
                who = names[0].decode() if names else "a client without a certificate"
                await context.abort(grpc.StatusCode.PERMISSION_DENIED, f"{who} may not call {method}")

        return _guarded(handler, refuse_strangers, method)


def _guarded(
    handler: Handler,
    check: Callable[[grpc.aio.ServicerContext[Any, Any]], Awaitable[None]],
    method: str,
) -> Handler:
    """`handler` with `check` run before its behaviour, for each of the four kinds of RPC."""
    kinds: list[tuple[Any, Callable[..., Any]]] = [
        (handler.unary_unary, grpc.unary_unary_rpc_method_handler),
        (handler.unary_stream, grpc.unary_stream_rpc_method_handler),
        (handler.stream_unary, grpc.stream_unary_rpc_method_handler),
        (handler.stream_stream, grpc.stream_stream_rpc_method_handler),
    ]
    present = [(behaviour, make) for behaviour, make in kinds if behaviour is not None]
    if not present:
        raise ValueError(f"PROFILEMESH_GRPC_ALLOWED_CLIENTS covers {method}, whose handler has no behaviour")
    inner: Any = present[0][0]
    make = present[0][1]
    guarded: Any
    if inspect.isasyncgenfunction(inner):

        async def guarded_generator(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            await check(context)
            async for response in inner(request, context):
                yield response

        guarded = guarded_generator
    else:

        async def guarded_call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            await check(context)
            return await inner(request, context)

        guarded = guarded_call
    wrapped: Handler = make(guarded, handler.request_deserializer, handler.response_serializer)
    return wrapped
