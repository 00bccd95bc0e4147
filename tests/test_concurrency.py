"""Concurrency: racing creates have one winner, concurrent reads are each counted exactly once."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import aiohttp
import grpc
from redis.cluster import RedisCluster

from common.storage import keys
from localdev.system import System
from profilemesh.profile.v1 import profile_pb2, profile_pb2_grpc
from profilemesh.reporting.v1 import reporting_pb2, reporting_pb2_grpc
from tests.conftest import PARTITIONS, events_of
from tests.helpers import wait_until

TIMEOUT_S = 30
CREATES = 50
SHED_RETRY_S = 0.05
# A call that failed so may still have run: the service could not confirm it.
UNKNOWN_OUTCOME = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def test_concurrent_creates_over_grpc_have_one_winner(
    system: System, redis_client: RedisCluster, audit: str, unique: str
) -> None:
    user = f"{unique}-same"

    async def run() -> list[grpc.StatusCode]:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{system.profile_port}") as channel:
            stub = profile_pb2_grpc.ProfileServiceStub(channel)

            async def create(i: int) -> grpc.StatusCode:
                request = profile_pb2.CreateProfileRequest(user=user, fields={"n": str(i), "email": f"{i}@example.com"})
                try:
                    reply = await stub.CreateProfile(request, timeout=TIMEOUT_S)
                except grpc.aio.AioRpcError as error:
                    assert error.details() == "Profile exists"
                    return error.code()
                assert reply.message == f"Profile created for: {user}"
                return grpc.StatusCode.OK

            return await asyncio.gather(*(create(i) for i in range(CREATES)))

    codes = asyncio.run(run())
    assert codes.count(grpc.StatusCode.OK) == 1
    assert codes.count(grpc.StatusCode.ALREADY_EXISTS) == CREATES - 1
    assert events_of(redis_client, user)[0][1] == "create" and len(events_of(redis_client, user)) == 1
    # The profile is the winner's, whole: no loser's fields mixed in.
    winner = codes.index(grpc.StatusCode.OK)
    assert redis_client.hgetall(keys.profile_key(user, PARTITIONS)) == {
        "n": str(winner),
        "email": f"{winner}@example.com",
    }


def test_concurrent_creates_through_the_gateway_have_one_winner(
    system: System, redis_client: RedisCluster, audit: str, unique: str
) -> None:
    user = f"{unique}-http"
    url = f"{system.gateway_url}/profile/{user}"

    async def run() -> list[tuple[int, dict]]:
        timeout = aiohttp.ClientTimeout(total=TIMEOUT_S)
        async with aiohttp.ClientSession(timeout=timeout) as session:

            async def create(i: int) -> tuple[int, dict]:
                async with session.post(url, json={"n": str(i)}) as reply:
                    return reply.status, await reply.json()

            return await asyncio.gather(*(create(i) for i in range(CREATES)))

    replies = asyncio.run(run())
    assert [status for status, _ in replies].count(201) == 1
    for status, body in replies:
        if status == 201:
            assert body == {"message": f"Profile created for: {user}"}
        else:
            assert (status, body["message"]) == (409, "Profile exists")
    assert [kind for _, kind in events_of(redis_client, user)] == ["create"]


def test_concurrent_reads_are_each_counted_once(
    system: System, redis_client: RedisCluster, audit: str, unique: str
) -> None:
    """1,000 reads at once over 20 fresh users: each user's score is exactly its reads.

    Calls beyond the server's in-flight limit are shed with RESOURCE_EXHAUSTED before they run, so
    the client retries them. A call failing with UNAVAILABLE or DEADLINE_EXCEEDED has an unknown
    outcome (it may have run); the stream, kept by the audit group, is the truth for those.
    """
    users = [f"{unique}-r{i:02d}" for i in range(20)]
    planned = {user: 31 + 2 * i for i, user in enumerate(users)}  # 31..69, distinct, 1,000 in all
    assert sum(planned.values()) == 1000

    async def run() -> tuple[Counter, Counter]:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{system.profile_port}") as channel:
            stub = profile_pb2_grpc.ProfileServiceStub(channel)
            await asyncio.gather(
                *(
                    stub.CreateProfile(
                        profile_pb2.CreateProfileRequest(user=user, fields={"name": user}), timeout=TIMEOUT_S
                    )
                    for user in users
                )
            )

            async def read(user: str) -> bool:
                """True when the read succeeded, False when its outcome is unknown."""
                while True:
                    try:
                        reply = await stub.GetProfile(profile_pb2.GetProfileRequest(user=user), timeout=TIMEOUT_S)
                    except grpc.aio.AioRpcError as error:
                        if error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                            await asyncio.sleep(SHED_RETRY_S)
                            continue
                        if error.code() in UNKNOWN_OUTCOME:
                            return False
                        raise
                    assert dict(reply.fields) == {"name": user}
                    return True

            # Interleave the users, so every partition's stream takes reads of several at once.
            order = [user for round_ in range(max(planned.values())) for user in users if planned[user] > round_]
            done = await asyncio.gather(*(read(user) for user in order))
        succeeded = Counter(user for user, ok in zip(order, done, strict=True) if ok)
        unknown = Counter(user for user, ok in zip(order, done, strict=True) if not ok)
        return succeeded, unknown

    succeeded, unknown = asyncio.run(run())
    read_events = {user: [kind for _, kind in events_of(redis_client, user)].count("read") for user in users}
    for user in users:
        assert succeeded[user] <= read_events[user] <= succeeded[user] + unknown[user], user
    if not unknown:
        assert read_events == planned

    with grpc.insecure_channel(f"127.0.0.1:{system.reporting_port}") as channel:
        reporting = reporting_pb2_grpc.ReportingServiceStub(channel)

        def scores() -> dict[str, int]:
            return {
                user: reporting.GetProfileStats(reporting_pb2.GetProfileStatsRequest(user=user), timeout=10).reads
                for user in users
            }

        total = sum(read_events.values())
        wait_until(lambda: sum(scores().values()) >= total, what=f"the aggregator to count {total} reads")
        assert scores() == read_events
        # Still exact after the aggregators' reclaim interval: nothing is counted twice later.
        time.sleep(3)
        final = scores()
    assert final == read_events and sum(final.values()) == total
    assert {
        user: redis_client.zscore(keys.reads_key(keys.partition_of(user, PARTITIONS)), user) for user in users
    } == read_events
