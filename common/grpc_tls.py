"""gRPC TLS and mutual TLS from the PROFILEMESH_GRPC_* settings: one place for servers and clients.

A component's certificate is what it serves and what it presents as a client. With a CA set, servers
require a client certificate that CA signed, and clients accept only servers it signed. Without a
certificate everything is plaintext, as in `make run`.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import grpc

from common.config import Settings
from common.interceptors import Handler


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


def parse_allowed_clients(text: str) -> dict[str, frozenset[str]]:
    """`/pkg.Service/Method=gateway,localdev;/pkg.Service/=gateway`: method or service prefix -> identities.

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


class AllowedClients(grpc.aio.ServerInterceptor):
    """Only the listed client identities may call a method that a rule covers (the longest prefix wins);
    methods no rule covers are open to every client the CA signed. Refusals are PERMISSION_DENIED."""

    def __init__(self, rules: dict[str, frozenset[str]]) -> None:
        self.rules = rules

    def allowed(self, method: str) -> frozenset[str] | None:
        matching = [prefix for prefix in self.rules if method.startswith(prefix)]
        return self.rules[max(matching, key=len)] if matching else None

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = await continuation(details)
        allowed = self.allowed(details.method)
        if handler is None or allowed is None:
            return handler
        method = details.method

        async def refuse_strangers(context: grpc.aio.ServicerContext[Any, Any]) -> None:
            identities = peer_identities(context)
            if not identities & allowed:
                names = list(context.auth_context().get("x509_common_name", []))
                who = names[0].decode() if names else "a client without a certificate"
                await context.abort(grpc.StatusCode.PERMISSION_DENIED, f"{who} may not call {method}")

        if handler.unary_unary is not None:
            unary: Any = handler.unary_unary

            async def guarded_unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                await refuse_strangers(context)
                return await unary(request, context)

            return grpc.unary_unary_rpc_method_handler(
                guarded_unary, handler.request_deserializer, handler.response_serializer
            )
        if handler.unary_stream is not None and not inspect.isasyncgenfunction(handler.unary_stream):
            stream: Any = handler.unary_stream

            async def guarded_stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                await refuse_strangers(context)
                return await stream(request, context)

            return grpc.unary_stream_rpc_method_handler(
                guarded_stream, handler.request_deserializer, handler.response_serializer
            )
        raise ValueError(f"PROFILEMESH_GRPC_ALLOWED_CLIENTS covers {method}, whose kind of handler it can't guard")
