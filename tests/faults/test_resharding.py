"""Moving a partition's slot to another shard under load: MOVED, ASK and TRYAGAIN are followed, nothing is lost."""

from __future__ import annotations

import asyncio
import threading
import uuid

import grpc
from redis.cluster import RedisCluster, key_slot

from bench.load import closed_loop
from common.storage import keys
from localdev.faults import primary_of
from localdev.resharding import migrate_slot
from localdev.system import System
from profilemesh.profile.v1 import profile_pb2, profile_pb2_grpc
from tests.conftest import PARTITIONS
from tests.helpers import wait_until

PARTITION = 3


def test_a_partition_moves_to_another_shard_under_load(fresh_system: System, fresh_client: RedisCluster) -> None:
    system = fresh_system
    stream = keys.events_key(PARTITION)
    slot = key_slot(stream.encode())
    source = primary_of(system.cluster, stream)
    primaries = {primary_of(system.cluster, keys.events_key(p)) for p in range(PARTITIONS)}
    target = next(index for index in sorted(primaries) if index != source)
    users = [
        u
        for u in (f"m{uuid.uuid4().hex[:6]}-{i}" for i in range(4000))
        if keys.partition_of(u, PARTITIONS) == PARTITION
    ][:150]

    async def creates_while_migrating() -> list:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{system.profile_port}") as channel:
            stub = profile_pb2_grpc.ProfileServiceStub(channel)

            async def create(user: str) -> None:
                await stub.CreateProfile(profile_pb2.CreateProfileRequest(user=user, fields={"k": "v"}), timeout=5)
                await asyncio.sleep(0.01)

            mover = threading.Thread(target=migrate_slot, args=(system.cluster, slot, source, target))
            load = asyncio.create_task(closed_loop(users, create, 4))
            await asyncio.sleep(0.2)
            mover.start()
            result = await load
            await asyncio.to_thread(mover.join)
            return result

    result = asyncio.run(creates_while_migrating())
    assert primary_of(system.cluster, stream) == target
    assert result.error_counts() == {}, result.error_counts()
    assert all(fresh_client.exists(keys.profile_key(u, PARTITIONS)) for u in users)
    # The aggregator follows the move too: every create's event is there and counted once.
    wait_until(
        lambda: int(fresh_client.hget(keys.totals_key(PARTITION), "create") or 0) == len(users),
        what="the creates on the moved partition to be counted",
    )
