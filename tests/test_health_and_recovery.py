"""gRPC health and reflection on every server, and riding out a whole-cluster outage.

The outage test stops every cluster node, so the module runs on a system of its own
(`fresh_system`); the services themselves are never restarted.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import grpc
import pytest
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from localdev.system import System
from profilemesh.profile.v1 import profile_pb2, profile_pb2_grpc
from profilemesh.reporting.v1 import reporting_pb2, reporting_pb2_grpc
from tests.helpers import http_call, wait_until

PROFILE_SERVICE = "profilemesh.profile.v1.ProfileService"
REPORTING_SERVICE = "profilemesh.reporting.v1.ReportingService"
HEALTH_SERVICE = "grpc.health.v1.Health"
REFLECTION_SERVICE = "grpc.reflection.v1alpha.ServerReflection"
# The services each server names in health and reflection (the aggregator only serves health).
SERVED = {"profile_svc": [PROFILE_SERVICE], "reporting_svc": [REPORTING_SERVICE], "aggregator_svc": []}
TIMEOUT_S = 5
# Health follows the cluster once a second; "within a few seconds" leaves room for a slow machine.
HEALTH_FLIP_S = 15


@pytest.fixture(scope="module")
def channels(fresh_system: System) -> Iterator[dict[str, grpc.Channel]]:
    opened = {name: grpc.insecure_channel(f"127.0.0.1:{port}") for name, port in fresh_system.grpc_ports.items()}
    yield opened
    for channel in opened.values():
        channel.close()


def health(channel: grpc.Channel, service: str = "") -> str:
    """The served status by name, or the gRPC error code's name when the check fails."""
    try:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT_S
        )
    except grpc.RpcError as error:
        return error.code().name
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def statuses(channels: dict[str, grpc.Channel]) -> dict[tuple[str, str], str]:
    """Every server's status, overall ("") and for each service it names."""
    return {(name, service): health(channels[name], service) for name in SERVED for service in ("", *SERVED[name])}


# --- (a) health ------------------------------------------------------------------------------------


def test_every_server_reports_serving(channels: dict[str, grpc.Channel]) -> None:
    assert set(statuses(channels).values()) == {"SERVING"}, statuses(channels)


@pytest.mark.parametrize("server", list(SERVED))
def test_health_of_an_unknown_service_is_not_found(channels: dict[str, grpc.Channel], server: str) -> None:
    """The standard health contract: a service the server doesn't know is NOT_FOUND, not SERVING."""
    assert health(channels[server], "profilemesh.nope.v1.Nope") == "NOT_FOUND"
    other = REPORTING_SERVICE if server == "profile_svc" else PROFILE_SERVICE
    assert health(channels[server], other) == "NOT_FOUND"


# --- (b) reflection --------------------------------------------------------------------------------


@pytest.mark.parametrize("server", list(SERVED))
def test_reflection_lists_services(channels: dict[str, grpc.Channel], server: str) -> None:
    listed = set(ProtoReflectionDescriptorDatabase(channels[server]).get_services())
    assert listed == {*SERVED[server], HEALTH_SERVICE, REFLECTION_SERVICE}


def test_reflection_describes_profile_service(channels: dict[str, grpc.Channel]) -> None:
    """What `grpcurl describe` needs: methods, their messages and the messages' fields, without .proto files."""
    pool = DescriptorPool(ProtoReflectionDescriptorDatabase(channels["profile_svc"]))
    service = pool.FindServiceByName(PROFILE_SERVICE)
    methods = {m.name: (m.input_type.full_name, m.output_type.full_name) for m in service.methods}
    package = "profilemesh.profile.v1"
    assert methods == {
        "CreateProfile": (f"{package}.CreateProfileRequest", f"{package}.CreateProfileResponse"),
        "GetProfile": (f"{package}.GetProfileRequest", f"{package}.Profile"),
        "BatchGetProfiles": (f"{package}.BatchGetProfilesRequest", f"{package}.BatchGetProfilesResponse"),
        "UpdateProfile": (f"{package}.UpdateProfileRequest", f"{package}.UpdateProfileResponse"),
        "DeleteProfile": (f"{package}.DeleteProfileRequest", f"{package}.DeleteProfileResponse"),
        "BatchWriteProfiles": (f"{package}.BatchWriteProfilesRequest", f"{package}.BatchWriteProfilesResponse"),
        "WatchProfileEvents": (f"{package}.WatchProfileEventsRequest", f"{package}.WatchProfileEventsResponse"),
    }
    request = pool.FindMessageTypeByName(f"{package}.CreateProfileRequest")
    assert [field.name for field in request.fields] == ["user", "fields"]
    assert request.fields_by_name["fields"].message_type.GetOptions().map_entry
    # The REST mapping travels with the descriptors, so a transcoder can be driven by reflection alone.
    assert service.file.dependencies and "google/api/annotations.proto" in [d.name for d in service.file.dependencies]


def test_reflection_describes_reporting_service(channels: dict[str, grpc.Channel]) -> None:
    pool = DescriptorPool(ProtoReflectionDescriptorDatabase(channels["reporting_svc"]))
    service = pool.FindServiceByName(REPORTING_SERVICE)
    package = "profilemesh.reporting.v1"
    assert {m.name: m.input_type.full_name for m in service.methods} == {
        "GetTopProfiles": f"{package}.GetTopProfilesRequest",
        "GetProfileStats": f"{package}.GetProfileStatsRequest",
        "GetOperationTotals": f"{package}.GetOperationTotalsRequest",
        "WatchTopProfiles": f"{package}.WatchTopProfilesRequest",
    }
    totals = pool.FindMessageTypeByName(f"{package}.OperationTotals")
    assert [field.name for field in totals.fields] == ["create", "read", "update", "delete"]


# --- (c) a whole-cluster outage --------------------------------------------------------------------


def test_services_ride_out_a_cluster_outage(fresh_system: System, channels: dict[str, grpc.Channel]) -> None:
    gateway = fresh_system.gateway_port
    profiles = profile_pb2_grpc.ProfileServiceStub(channels["profile_svc"])
    reporting = reporting_pb2_grpc.ReportingServiceStub(channels["reporting_svc"])

    def reads(user: str) -> int:
        return reporting.GetProfileStats(reporting_pb2.GetProfileStatsRequest(user=user), timeout=TIMEOUT_S).reads

    # Before: a profile read twice, counted.
    assert http_call(gateway, "POST", "/profile/before", {"email": "before@example.com"})[0] == 201
    for _ in range(2):
        assert http_call(gateway, "GET", "/profile/before")[0] == 200
    wait_until(lambda: reads("before") == 2, what="the reads before the outage to be counted")
    pids = {name: process.pid for name, process in fresh_system.processes.items()}

    # Health Watch streams the change too; collect what one watcher sees through the outage.
    watch = health_pb2_grpc.HealthStub(channels["profile_svc"]).Watch(
        health_pb2.HealthCheckRequest(service=PROFILE_SERVICE), timeout=120
    )
    seen: list[str] = []

    def follow() -> None:
        try:
            for reply in watch:
                seen.append(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))
        except grpc.RpcError:
            pass  # cancelled below

    watcher = threading.Thread(target=follow, daemon=True)
    watcher.start()
    try:
        wait_until(lambda: seen == ["SERVING"], timeout_s=TIMEOUT_S, what="the health watch's first status")

        fresh_system.cluster.stop()
        try:
            wait_until(
                lambda: set(statuses(channels).values()) == {"NOT_SERVING"},
                timeout_s=HEALTH_FLIP_S,
                what="health to turn NOT_SERVING",
            )
            wait_until(
                lambda: seen[-1] == "NOT_SERVING", timeout_s=TIMEOUT_S, what="the health watch to see NOT_SERVING"
            )

            status, body = http_call(gateway, "GET", "/readyz")
            assert status == 503 and body["status"] == "not ready", body
            # The gateway's channels send calls only to SERVING replicas: with none, the check itself is UNAVAILABLE.
            assert set(body["upstreams"].values()) <= {"NOT_SERVING", "UNAVAILABLE"}, body
            # Every route answers 503 with a JSON message while the cluster is away: never 500.
            for method, path, payload in (
                ("GET", "/profile/before", None),
                ("POST", "/profile/during", {"email": "during@example.com"}),
                ("PATCH", "/profile/before", {"email": "changed@example.com"}),
                ("DELETE", "/profile/before", None),
                ("GET", "/reporting/profileStats/3", None),
                ("GET", "/reporting/users/before/stats", None),
                ("GET", "/reporting/operationTotals", None),
            ):
                status, body = http_call(gateway, method, path, payload)
                assert status == 503, (method, path, status, body)
                assert isinstance(body["message"], str) and body["message"], body
            with pytest.raises(grpc.RpcError) as caught:
                profiles.GetProfile(profile_pb2.GetProfileRequest(user="before"), timeout=TIMEOUT_S)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            # Bad input is still answered as bad input, without the cluster (by the service itself: the
            # gateway sends nothing to NOT_SERVING replicas, so through it every call answers 503 now).
            with pytest.raises(grpc.RpcError) as caught:
                profiles.GetProfile(profile_pb2.GetProfileRequest(user="-x"), timeout=TIMEOUT_S)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        finally:
            fresh_system.cluster.start()

        wait_until(
            lambda: set(statuses(channels).values()) == {"SERVING"}, timeout_s=30, what="health to return to SERVING"
        )
        wait_until(lambda: seen[-1] == "SERVING", timeout_s=TIMEOUT_S, what="the health watch to see SERVING again")
        # Watch sends each change once; nodes stop and start one by one, so a flap in between is allowed.
        assert seen[0] == "SERVING" and "NOT_SERVING" in seen and seen[-1] == "SERVING", seen
        wait_until(fresh_system.gateway_ready, timeout_s=TIMEOUT_S, what="the gateway to be ready again")
    finally:
        watch.cancel()
        watcher.join(TIMEOUT_S)

    # The same processes, never restarted, carry on.
    assert {name: process.pid for name, process in fresh_system.processes.items()} == pids
    assert all(process.poll() is None for process in fresh_system.processes.values())

    # Data from before the outage survived it (append-only files), and nothing of the outage was written.
    assert http_call(gateway, "GET", "/profile/before") == (200, {"email": "before@example.com"})
    assert http_call(gateway, "GET", "/profile/during")[0] == 404
    assert http_call(gateway, "POST", "/profile/after", {"email": "after@example.com"})[0] == 201
    for _ in range(3):
        assert http_call(gateway, "GET", "/profile/after")[0] == 200
    # The aggregator counts again: the read of "before" just now, and the new profile's reads.
    wait_until(lambda: (reads("before"), reads("after")) == (3, 3), what="the aggregator to count again")
    expected = {"results": [{"user": "after", "score": 3}, {"user": "before", "score": 3}]}
    # The top list follows the counts by a copy into its index (docs/architecture.md, "The top list's index").
    wait_until(lambda: http_call(gateway, "GET", "/reporting/profileStats/10") == (200, expected), what="the top list")
    totals = reporting.GetOperationTotals(reporting_pb2.GetOperationTotalsRequest(), timeout=TIMEOUT_S)
    assert (totals.create, totals.read, totals.update, totals.delete) == (2, 6, 0, 0)
