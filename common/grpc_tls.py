"""gRPC TLS and mutual TLS from the PROFILEMESH_GRPC_* settings: one place for servers and clients.

A component's certificate is what it serves and what it presents as a client. With a CA set, servers
require a client certificate that CA signed, and clients accept only servers it signed. Without a
certificate everything is plaintext, as in `make run`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc

from common.config import Settings


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
