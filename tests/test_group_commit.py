"""Group commit (common/storage/group_commit.py): concurrent changes on one primary share one durability wait,
and each caller still gets its own answer. Against the running system: its profile_svc, replica durability."""

from __future__ import annotations

import asyncio

import grpc

from common.storage import keys
from localdev.system import System
from profilemesh.profile.v1 import profile_pb2, profile_pb2_grpc

CONCURRENT = 200
PARTITIONS = 16  # the test system's partition count (its default)


def _waits(system: System) -> int:
    """WAIT commands the cluster's nodes have run (INFO commandstats)."""
    return sum(
        int(system.cluster.node(index).info("commandstats").get("cmdstat_wait", {}).get("calls", 0))
        for index in range(len(system.cluster.ports))
    )


def _users_of_one_partition(prefix: str, count: int) -> list[str]:
    """`count` user names whose profiles all live in the same partition, hence on one primary."""
    users, candidate = [], 0
    while len(users) < count:
        user = f"{prefix}-{candidate}"
        if keys.partition_of(user, PARTITIONS) == 5:
            users.append(user)
        candidate += 1
    return users


async def _create_all(system: System, users: list[str]) -> list[grpc.StatusCode]:
    async with system.grpc_aio_channel(f"127.0.0.1:{system.profile_port}") as channel:
        stub = profile_pb2_grpc.ProfileServiceStub(channel)

        async def create(user: str) -> grpc.StatusCode:
            try:
                await stub.CreateProfile(
                    profile_pb2.CreateProfileRequest(user=user, fields={"email": f"{user}@example.com"}), timeout=30
                )
            except grpc.aio.AioRpcError as error:
                return error.code()
            return grpc.StatusCode.OK

        return list(await asyncio.gather(*(create(user) for user in users)))


def test_concurrent_creates_on_one_primary_share_their_waits(system: System, unique: str) -> None:
    users = _users_of_one_partition(unique, CONCURRENT)
    before = _waits(system)
    outcomes = asyncio.run(_create_all(system, users))
    waits = _waits(system) - before
    assert outcomes == [grpc.StatusCode.OK] * CONCURRENT
    print(f"{waits} WAITs for {CONCURRENT} creates")
    assert 1 <= waits <= CONCURRENT // 4, f"{waits} WAITs for {CONCURRENT} creates"
    stub = profile_pb2_grpc.ProfileServiceStub(system.grpc_channel(system.profile_port))
    for user in users:
        assert stub.GetProfile(profile_pb2.GetProfileRequest(user=user), timeout=10).fields == {
            "email": f"{user}@example.com"
        }


def test_each_change_in_a_group_gets_its_own_answer(system: System, unique: str) -> None:
    """Creates of profiles that exist go in the same groups as new ones: those alone answer ALREADY_EXISTS."""
    users = _users_of_one_partition(unique, CONCURRENT)
    existing = users[::5]
    assert asyncio.run(_create_all(system, existing)) == [grpc.StatusCode.OK] * len(existing)
    outcomes = asyncio.run(_create_all(system, users))
    expected = [grpc.StatusCode.ALREADY_EXISTS if user in existing else grpc.StatusCode.OK for user in users]
    assert outcomes == expected
