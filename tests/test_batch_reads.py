"""BatchGetProfiles and the gateway's read batching: one answer per member, one counted read per served read."""

from __future__ import annotations

import asyncio
import uuid

import aiohttp
import grpc
import pytest

from localdev.system import System
from profilemesh.profile.v1 import profile_pb2, profile_pb2_grpc
from profilemesh.reporting.v1 import reporting_pb2, reporting_pb2_grpc
from tests.helpers import calls_answered, http_call, status_details, wait_until

TIMEOUT_S = 10


def test_a_batch_answers_each_member_in_order(
    system: System, profile_stub: profile_pb2_grpc.ProfileServiceStub, unique: str
) -> None:
    """Found and missing users mixed (one named twice): profiles where there are some, NOT_FOUND where not."""
    found = [f"{unique}-a", f"{unique}-b"]
    for user in found:
        profile_stub.CreateProfile(
            profile_pb2.CreateProfileRequest(user=user, fields={"name": user}), timeout=TIMEOUT_S
        )
    users = [found[0], f"{unique}-missing", found[1], found[0]]
    reply = profile_stub.BatchGetProfiles(profile_pb2.BatchGetProfilesRequest(users=users), timeout=TIMEOUT_S)
    assert [result.WhichOneof("result") for result in reply.results] == ["profile", "error", "profile", "profile"]
    assert [result.profile.user for result in reply.results if result.HasField("profile")] == [found[0], *found[::-1]]
    assert all(r.profile.fields["name"] == r.profile.user for r in reply.results if r.HasField("profile"))
    missing = reply.results[1].error
    assert missing.code == grpc.StatusCode.NOT_FOUND.value[0]
    assert missing.message == f"Profile not found for {unique}-missing"


@pytest.mark.parametrize(
    ("users", "named"),
    [
        ([], "users must not be empty"),
        (["ok-user", "bad user!"], "user 'bad user!' is invalid"),
        (["ok-user", ""], "user '' is invalid"),
        ([f"u{i}" for i in range(1001)], "too many users: 1001, at most 1000"),
    ],
)
def test_bad_batches_are_refused_whole(
    profile_stub: profile_pb2_grpc.ProfileServiceStub, users: list[str], named: str
) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        profile_stub.BatchGetProfiles(profile_pb2.BatchGetProfilesRequest(users=users), timeout=TIMEOUT_S)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert named in raised.value.details()
    violation = status_details(raised.value)["BadRequest"].field_violations[0]
    assert violation.field.startswith("users")
    assert named in violation.description


def test_concurrent_rest_reads_are_each_answered_and_counted_once(
    system: System, reporting_stub: reporting_pb2_grpc.ReportingServiceStub
) -> None:
    """1,000 concurrent GETs (batched by the gateway): each its own body or 404, exactly 1,000 reads counted."""
    run = uuid.uuid4().hex[:8]
    users = [f"batch-{run}-{i}" for i in range(20)]
    for user in users:
        assert http_call(system.gateway_port, "POST", f"/profile/{user}", {"who": user})[0] == 201
    missing = f"batch-{run}-missing"

    async def read_all() -> list[tuple[str, int, dict[str, str]]]:
        # Below the gateway's load shedding bound (PROFILEMESH_MAX_IN_FLIGHT, 256), so none is refused.
        connector = aiohttp.TCPConnector(limit=200)
        async with aiohttp.ClientSession(connector=connector) as session:

            async def one(user: str) -> tuple[str, int, dict[str, str]]:
                async with session.get(f"{system.gateway_url}/profile/{user}") as reply:
                    return user, reply.status, await reply.json()

            return await asyncio.gather(*(one(users[i % len(users)]) for i in range(1000)), one(missing))

    calls_before = calls_answered(system.metrics_url("profile_svc"), "BatchGetProfiles")
    answers = asyncio.run(read_all())
    # Batched, not one call per read (the exact number depends on timing).
    assert 0 < calls_answered(system.metrics_url("profile_svc"), "BatchGetProfiles") - calls_before < 1001
    assert [(status, body) for user, status, body in answers if user != missing] == [
        (200, {"who": user}) for user, _, _ in answers if user != missing
    ]
    assert answers[-1][1] == 404
    assert answers[-1][2]["message"] == f"Profile not found for {missing}"

    def counted() -> int:
        return sum(
            reporting_stub.GetProfileStats(reporting_pb2.GetProfileStatsRequest(user=user), timeout=TIMEOUT_S).reads
            for user in users
        )

    wait_until(lambda: counted() == 1000, timeout_s=30, what="1,000 reads counted")
    assert counted() == 1000
    assert (
        reporting_stub.GetProfileStats(reporting_pb2.GetProfileStatsRequest(user=missing), timeout=TIMEOUT_S).reads == 0
    )
