"""Creates under a primary failover: which acknowledged creates survive, what errors callers see.

Used by tests/faults (which assert the guarantees) and by `python -m bench.failover` (which
reports the figures for each durability setting side by side).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass

import grpc
from redis.cluster import RedisCluster

from bench.load import LoadResult, closed_loop
from common.storage import keys
from localdev.faults import fail_over_by_killing
from localdev.system import System
from profilemesh.profile.v1 import profile_pb2, profile_pb2_grpc

CALL_TIMEOUT_S = 2.0


@dataclass
class FailoverRun:
    load: LoadResult
    killed_at: float
    promoted_after_s: float
    rejoined_after_s: float
    lost: list[str]  # acknowledged creates that are not in the cluster afterwards

    @property
    def recovered_after_s(self) -> float:
        """From the kill to the end of the last failed call: when writes succeeded again everywhere."""
        failures = [o.ended for o in self.load.failed() if o.ended >= self.killed_at]
        return max(failures) - self.killed_at if failures else 0.0


async def _creates_with_failover(
    system: System, users: list[str], workers: int, kill_after: int
) -> tuple[LoadResult, float, float, float]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{system.profile_port}") as channel:
        stub = profile_pb2_grpc.ProfileServiceStub(channel)

        async def create(user: str) -> None:
            await stub.CreateProfile(
                profile_pb2.CreateProfileRequest(user=user, fields={"n": user}), timeout=CALL_TIMEOUT_S
            )

        progress = LoadResult()
        load = asyncio.create_task(closed_loop(users, create, workers, progress))
        while not load.done() and len(progress.outcomes) < kill_after:
            await asyncio.sleep(0.01)
        killed_at = time.monotonic()
        victim, _, promoted_after = await asyncio.to_thread(fail_over_by_killing, system.cluster, keys.events_key(0))
        # The old primary comes back (as an orchestrator would restart it) and rejoins as a replica.
        await asyncio.to_thread(system.cluster.start_node, victim)
        await asyncio.to_thread(system.cluster.wait_ready)
        rejoined_after = time.monotonic() - killed_at
        return await load, killed_at, promoted_after, rejoined_after


def run_failover(system: System, users: int = 3000, workers: int = 16, kill_after: int = 500) -> FailoverRun:
    names = [f"fo{uuid.uuid4().hex[:6]}-{i}" for i in range(users)]
    load, killed_at, promoted_after, rejoined_after = asyncio.run(
        _creates_with_failover(system, names, workers, kill_after)
    )
    partitions = system.client_settings().partitions  # the system's own count: profiles are found by it
    client = RedisCluster.from_url(system.cluster.admin_url, decode_responses=True)
    try:
        lost = [o.item for o in load.ok() if not client.exists(keys.profile_key(o.item, partitions))]
    finally:
        client.close()
    return FailoverRun(load, killed_at, promoted_after, rejoined_after, lost)
