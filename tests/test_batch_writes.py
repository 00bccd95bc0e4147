"""BatchWriteProfiles: many changes in one call, each answered as its own call would be, in order."""

from __future__ import annotations

import asyncio

import aiohttp
import grpc
import pytest
from google.rpc import error_details_pb2

from common.storage import keys
from localdev.faults import primary_of
from localdev.system import System
from profilemesh.profile.v1 import profile_pb2, profile_pb2_grpc
from tests.conftest import PARTITIONS
from tests.helpers import calls_answered, http_call, wait_until

TIMEOUT_S = 10
Write = profile_pb2.ProfileWriteRequest


def create(user: str, **fields: str) -> Write:
    return Write(create=profile_pb2.CreateProfileRequest(user=user, fields=fields or {"email": f"{user}@example.com"}))


def update(user: str, **fields: str) -> Write:
    return Write(update=profile_pb2.UpdateProfileRequest(user=user, fields=fields))


def delete(user: str) -> Write:
    return Write(delete=profile_pb2.DeleteProfileRequest(user=user))


def outcome(result: profile_pb2.ProfileWriteResult) -> str:
    """A result as `created`, `updated`, `deleted` or the error's reason."""
    kind = result.WhichOneof("result")
    if kind != "error":
        return str(kind)
    info = error_details_pb2.ErrorInfo()
    assert result.error.details[0].Unpack(info)
    return info.reason


def batch(stub: profile_pb2_grpc.ProfileServiceStub, writes: list[Write]) -> list[str]:
    reply = stub.BatchWriteProfiles(profile_pb2.BatchWriteProfilesRequest(requests=writes), timeout=TIMEOUT_S)
    return [outcome(result) for result in reply.results]


def test_each_change_is_answered_as_its_own_call_would_be(
    profile_stub: profile_pb2_grpc.ProfileServiceStub, unique: str
) -> None:
    a, b, c = f"{unique}-a", f"{unique}-b", f"{unique}-c"
    assert batch(profile_stub, [create(a), create(b)]) == ["created", "created"]
    outcomes = batch(
        profile_stub,
        [
            create(a),  # exists
            update(b, email="b@example.org"),
            update(c, email="c@example.org"),  # no such profile
            delete(a),
            create(c, email="c@example.com"),
            create("-bad"),  # its own INVALID_ARGUMENT, not the call's
            delete(f"{unique}-nobody"),
        ],
    )
    assert outcomes == [
        "PROFILE_EXISTS",
        "updated",
        "PROFILE_NOT_FOUND",
        "deleted",
        "created",
        "INVALID_ARGUMENT",
        "PROFILE_NOT_FOUND",
    ]
    fields = {
        user: profile_stub.GetProfile(profile_pb2.GetProfileRequest(user=user), timeout=TIMEOUT_S).fields
        for user in (b, c)
    }
    assert fields == {b: {"email": "b@example.org"}, c: {"email": "c@example.com"}}
    with pytest.raises(grpc.RpcError) as gone:
        profile_stub.GetProfile(profile_pb2.GetProfileRequest(user=a), timeout=TIMEOUT_S)
    assert gone.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    ("writes", "says"),
    [
        ([], "requests must not be empty"),
        ([create(f"u{i}") for i in range(1001)], "too many changes: 1001, at most 1000"),
        ([create("fine"), Write()], "requests[1] names no operation"),
    ],
    ids=["empty", "too-many", "no-operation"],
)
def test_a_malformed_batch_is_refused_whole_and_changes_nothing(
    profile_stub: profile_pb2_grpc.ProfileServiceStub, writes: list[Write], says: str
) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        profile_stub.BatchWriteProfiles(profile_pb2.BatchWriteProfilesRequest(requests=writes), timeout=TIMEOUT_S)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert says in refused.value.details()
    with pytest.raises(grpc.RpcError) as missing:
        profile_stub.GetProfile(profile_pb2.GetProfileRequest(user="fine"), timeout=TIMEOUT_S)
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


def _replica_of(system: System, primary: int) -> int:
    primary_id = next(n.id for n in system.cluster.cluster_nodes() if n.port == system.cluster.ports[primary])
    return next(
        system.cluster.ports.index(n.port) for n in system.cluster.cluster_nodes() if n.primary_id == primary_id
    )


def test_a_shard_without_replica_fails_only_its_own_members(fresh_system: System, unique: str) -> None:
    """Members for several shards; one shard's replica is down: replica durability can't be had there, so its
    members answer UNAVAILABLE (NO_REPLICA) and change nothing, while the others are made."""
    users = [f"{unique}-{i}" for i in range(48)]
    degraded = primary_of(fresh_system.cluster, keys.profile_key(users[0], PARTITIONS))
    on_degraded = {u for u in users if primary_of(fresh_system.cluster, keys.profile_key(u, PARTITIONS)) == degraded}
    assert len(on_degraded) < len(users), "the users span several shards"
    replica = _replica_of(fresh_system, degraded)
    stub = profile_pb2_grpc.ProfileServiceStub(fresh_system.grpc_channel(fresh_system.profile_port))
    fresh_system.cluster.stop_node(replica)
    try:
        expected = ["NO_REPLICA" if user in on_degraded else "created" for user in users]
        # The primary learns its replica is gone within the cluster's node timeout; until then WAIT times out.
        probes = (f"{unique}-probe-{i}" for i in range(10_000))
        on_shard = (u for u in probes if primary_of(fresh_system.cluster, keys.profile_key(u, PARTITIONS)) == degraded)
        wait_until(
            lambda: batch(stub, [create(next(on_shard))]) == ["NO_REPLICA"],
            timeout_s=30,
            what="the degraded primary to report no replica",
        )
        assert batch(stub, [create(user) for user in users]) == expected
        for user in users:
            try:
                stub.GetProfile(profile_pb2.GetProfileRequest(user=user), timeout=TIMEOUT_S)
                found = True
            except grpc.RpcError as error:
                assert error.code() == grpc.StatusCode.NOT_FOUND
                found = False
            assert found == (user not in on_degraded), user
    finally:
        fresh_system.cluster.start_node(replica)


def test_concurrent_rest_changes_are_batched_and_each_answered_as_alone(system: System, unique: str) -> None:
    """300 concurrent POSTs, PATCHes and DELETEs through the gateway: batched into BatchWriteProfiles calls, each
    answered with the status and body it would get alone (201, 200, 404, 409)."""
    existing = [f"{unique}-old-{i}" for i in range(100)]
    for user in existing:
        assert http_call(system.gateway_port, "POST", f"/profile/{user}", {"n": "0"})[0] == 201

    async def change_all() -> list[tuple[str, str, int, dict[str, str]]]:
        connector = aiohttp.TCPConnector(limit=200)  # below the gateway's shedding bound: none refused
        async with aiohttp.ClientSession(connector=connector) as session:

            async def one(method: str, user: str, body: dict[str, str] | None) -> tuple[str, str, int, dict[str, str]]:
                async with session.request(method, f"{system.gateway_url}/profile/{user}", json=body) as reply:
                    return method, user, reply.status, await reply.json()

            requests = [("POST", f"{unique}-new-{i}", {"n": str(i)}) for i in range(100)]
            requests += [("PATCH", user, {"n": "1"}) for user in existing[:50]]
            requests += [("DELETE", user, None) for user in existing[50:]]
            requests += [("POST", user, {"n": "2"}) for user in existing[:25]]  # exists: 409
            requests += [("PATCH", f"{unique}-nobody-{i}", {"n": "3"}) for i in range(25)]  # 404
            return await asyncio.gather(*(one(*request) for request in requests))

    calls_before = calls_answered(system.metrics_url("profile_svc"), "BatchWriteProfiles")
    answers = asyncio.run(change_all())
    assert calls_answered(system.metrics_url("profile_svc"), "BatchWriteProfiles") > calls_before, (
        "no change was batched"
    )
    for method, user, status, body in answers:
        if method == "POST" and "-new-" in user:
            assert (status, body) == (201, {"message": f"Profile created for: {user}"})
        elif method == "POST":
            assert (status, body["message"]) == (409, "Profile exists")
        elif method == "PATCH" and "-nobody-" in user:
            assert (status, body["message"]) == (404, f"Profile not found for {user}")
        elif method == "PATCH":
            assert (status, body) == (200, {"message": f"Profile updated for {user}"})
        else:
            assert (status, body) == (200, {"message": f"Profile deleted for {user}"})
    assert http_call(system.gateway_port, "GET", f"/profile/{existing[0]}") == (200, {"n": "1"})
    assert http_call(system.gateway_port, "GET", f"/profile/{existing[99]}")[0] == 404
    assert http_call(system.gateway_port, "GET", f"/profile/{unique}-new-7") == (200, {"n": "7"})
