"""A BatchGetProfiles that meets a failover: every member gets its own right answer, never another's profile."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter

import grpc

from common.storage import keys
from localdev.faults import fail_over_by_killing
from localdev.system import System
from profilemesh.profile.v1 import profile_pb2, profile_pb2_grpc
from tests.conftest import PARTITIONS

NOT_FOUND = grpc.StatusCode.NOT_FOUND.value[0]
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE.value[0]
CALL_FAILURES = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}


def test_batches_across_a_primary_kill_answer_each_member(fresh_system: System) -> None:
    system = fresh_system
    run = uuid.uuid4().hex[:6]
    users = [f"bf{run}-{i}" for i in range(48)]  # on every shard
    missing = [f"bf{run}-missing-{i}" for i in range(4)]
    asked = [user for pair in zip(users, [*missing, *missing * 11], strict=True) for user in pair]
    outcomes: Counter[str] = Counter()
    wrong: list[str] = []

    async def scenario() -> None:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{system.profile_port}") as channel:
            stub = profile_pb2_grpc.ProfileServiceStub(channel)
            for user in users:
                await stub.CreateProfile(profile_pb2.CreateProfileRequest(user=user, fields={"who": user}), timeout=10)
            stop = asyncio.Event()

            async def reader() -> None:
                while not stop.is_set():
                    try:
                        reply = await stub.BatchGetProfiles(profile_pb2.BatchGetProfilesRequest(users=asked), timeout=5)
                    except grpc.aio.AioRpcError as error:
                        outcomes[f"call {error.code().name}"] += 1
                        if error.code() not in CALL_FAILURES:
                            wrong.append(f"call failed with {error.code().name}: {error.details()}")
                        continue
                    if len(reply.results) != len(asked):
                        wrong.append(f"{len(reply.results)} results for {len(asked)} users")
                        continue
                    for user, result in zip(asked, reply.results, strict=True):
                        if result.HasField("profile"):
                            outcomes["profile"] += 1
                            if result.profile.user != user or dict(result.profile.fields) != {"who": user}:
                                wrong.append(f"{user} got {result.profile}")
                        elif result.error.code == NOT_FOUND and user in missing:
                            outcomes["not found"] += 1
                        elif result.error.code == UNAVAILABLE:
                            outcomes["unavailable"] += 1
                        else:
                            wrong.append(f"{user}: {result.error.code} {result.error.message}")

            readers = [asyncio.create_task(reader()) for _ in range(4)]
            await asyncio.sleep(1)
            victim, _, _ = await asyncio.to_thread(
                fail_over_by_killing, system.cluster, keys.profile_key(users[0], PARTITIONS)
            )
            promoted_at = time.monotonic()
            await asyncio.sleep(3)  # long enough for the client to find the new primary
            before_end = outcomes["profile"]
            await asyncio.sleep(1)
            stop.set()
            await asyncio.gather(*readers)
            assert outcomes["profile"] > before_end, (
                f"no profile served in the last second after the failover: {outcomes}"
            )
            print(f"\nbatch failover: {dict(outcomes)}, {time.monotonic() - promoted_at:.1f}s after promotion")
            await asyncio.to_thread(system.cluster.start_node, victim)

    asyncio.run(scenario())
    system.cluster.wait_ready()
    assert wrong == []
    assert outcomes["profile"] > 0 and outcomes["not found"] > 0
