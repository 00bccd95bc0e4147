"""A whole shard down: its partitions answer UNAVAILABLE (or run out their deadline), the others keep working."""

from __future__ import annotations

import grpc

from common import keys
from localdev.faults import primary_of, shard_of
from localdev.system import System
from profilemesh.profile.v1 import profile_pb2, profile_pb2_grpc
from tests.conftest import PARTITIONS
from tests.helpers import http_call, wait_until

USERS = [f"shard-user-{i}" for i in range(64)]


def _read_all(stub: profile_pb2_grpc.ProfileServiceStub) -> dict[str, grpc.StatusCode]:
    """Read every user at once (a call to a down partition may take its whole 2 s deadline)."""
    calls = {user: stub.GetProfile.future(profile_pb2.GetProfileRequest(user=user), timeout=2) for user in USERS}
    return {user: call.code() for user, call in calls.items()}


def test_a_stopped_shard_fails_only_its_partitions(fresh_system: System) -> None:
    system = fresh_system
    cluster = system.cluster
    pids = {name: process.pid for name, process in system.processes.items()}
    with grpc.insecure_channel(f"127.0.0.1:{system.profile_port}") as channel:
        stub = profile_pb2_grpc.ProfileServiceStub(channel)
        for user in USERS:
            stub.CreateProfile(profile_pb2.CreateProfileRequest(user=user, fields={"k": "v"}), timeout=5)

        shard = shard_of(cluster, keys.events_key(0))
        down = {user for user in USERS
                if primary_of(cluster, keys.events_key(keys.partition_of(user, PARTITIONS))) == shard[0]}
        assert 0 < len(down) < len(USERS)
        for index in shard:
            cluster.stop_node(index)

        # Once the cluster has noticed (node timeout 2 s), the other partitions answer again.
        wait_until(lambda: all(code == grpc.StatusCode.OK for user, code in _read_all(stub).items() if user not in down),
                   timeout_s=30, what="the other partitions to serve")
        codes = _read_all(stub)
        assert {codes[user] for user in down} <= {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}
        assert all(codes[user] == grpc.StatusCode.OK for user in USERS if user not in down)
        # The service stays in its load balancer: most of its partitions work.
        assert system.grpc_status(system.profile_port) == "SERVING"
        status, body = http_call(system.gateway_port, "GET", f"/profile/{sorted(down)[0]}")
        assert status in (503, 504) and body["message"]

        for index in shard:
            cluster.start_node(index)
        cluster.wait_ready()
        wait_until(lambda: set(_read_all(stub).values()) == {grpc.StatusCode.OK}, timeout_s=30, what="every partition back")
    assert {name: process.pid for name, process in system.processes.items()} == pids
