"""Failover of a primary under load, aggregator crashes, a whole-cluster restart: nothing acknowledged is lost."""

from __future__ import annotations

import asyncio
import random
import signal
import time
import uuid
from collections import Counter
from dataclasses import dataclass

import grpc
from redis.cluster import RedisCluster

from bench.failover import run_failover
from bench.load import LoadResult, closed_loop
from common.storage import keys
from common.storage.nodes import key_slot
from localdev.faults import fail_over_by_killing
from localdev.system import System
from profilemesh.profile.v1 import profile_pb2, profile_pb2_grpc
from tests.conftest import PARTITIONS
from tests.helpers import aggregator_settled, expected_statistics, history_of, scores_of, wait_until

TOLERATED = {"UNAVAILABLE", "DEADLINE_EXCEEDED"}
# With the read check off (the default), a read answered by a primary in the instant before its kill -9 may
# have its event die with it: reads never wait for replication (docs/durability.md, "Reads"). That instant
# is the replica's lag, milliseconds even on a busy machine: half a second before the kill covers it.
ANSWERED_BEFORE_THE_KILL_S = 0.5


def test_acknowledged_creates_survive_a_primary_kill(fresh_system: System) -> None:
    """kill -9 of a primary mid-run with `replica` durability: every acknowledged create is readable."""
    run = run_failover(fresh_system, users=3000, workers=16, kill_after=500)
    print(
        f"\nfailover: {len(run.load.ok())} acknowledged of {len(run.load.outcomes)}, errors {run.load.error_counts()}, "
        f"promoted after {run.promoted_after_s:.2f}s, writes recovered after {run.recovered_after_s:.2f}s, lost {len(run.lost)}"
    )
    assert len(run.load.outcomes) == 3000
    assert set(run.load.error_counts()) <= TOLERATED
    assert run.lost == []
    assert len(run.load.ok()) >= 2000


def _settled(client: RedisCluster) -> bool:
    return aggregator_settled(client, PARTITIONS)


@dataclass
class Failover:
    killed_at: float  # time.monotonic() when the primary was sent its SIGKILL
    partitions: set[int]  # the partitions of the shard that failed over


def _partitions_served_by(system: System, node: int) -> set[int]:
    line = next(line for line in system.cluster.cluster_nodes() if line.port == system.cluster.ports[node])
    return {p for p in range(PARTITIONS) if line.serves(key_slot(keys.events_key(p)))}


def test_counts_stay_exact_across_aggregator_crashes_and_a_failover(
    fresh_system: System, fresh_client: RedisCluster
) -> None:
    """10,000 reads, deletes and re-creates while the aggregator is SIGKILLed and restarted and a primary fails over:
    the statistics are exactly the events the cluster holds, and every acknowledged read has its event."""
    system = fresh_system
    run = uuid.uuid4().hex[:6]
    users = [f"x{run}-{i}" for i in range(100)]
    audit = f"audit-{run}"
    for partition in range(PARTITIONS):
        fresh_client.xgroup_create(keys.events_key(partition), audit, id="$", mkstream=True)

    async def scenario() -> tuple[LoadResult, Failover]:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{system.profile_port}") as channel:
            stub = profile_pb2_grpc.ProfileServiceStub(channel)
            for user in users:
                await stub.CreateProfile(profile_pb2.CreateProfileRequest(user=user, fields={"k": "v"}), timeout=5)

            async def operate(item: str) -> None:
                user, _, kind = item.split("#")
                if kind == "churn":  # a delete and a re-create: the user's count starts again
                    await stub.DeleteProfile(profile_pb2.DeleteProfileRequest(user=user), timeout=2)
                    await stub.CreateProfile(profile_pb2.CreateProfileRequest(user=user, fields={"k": "v"}), timeout=2)
                else:
                    await stub.GetProfile(profile_pb2.GetProfileRequest(user=user), timeout=2)

            progress = LoadResult()
            rng = random.Random(run)
            items = [f"{rng.choice(users)}#{i}#{'churn' if rng.random() < 0.03 else 'read'}" for i in range(10_000)]
            load = asyncio.create_task(closed_loop(items, operate, 16, progress))
            crashes = 0
            failover: Failover | None = None
            while not load.done():
                await asyncio.sleep(0.4)
                if load.done():
                    break
                system.stop_process("aggregator_svc", signal.SIGKILL)
                crashes += 1
                system.start_process("aggregator_svc", "aggregator_svc")
                if failover is None and len(progress.outcomes) > 3000:
                    victim, promoted, promoted_after_s = await asyncio.to_thread(
                        fail_over_by_killing, system.cluster, keys.events_key(0)
                    )
                    killed_at = time.monotonic() - promoted_after_s
                    failover = Failover(killed_at, await asyncio.to_thread(_partitions_served_by, system, promoted))
                    await asyncio.to_thread(system.cluster.start_node, victim)
            assert crashes >= 3 and failover is not None
            return await load, failover

    result, failover = asyncio.run(scenario())
    system.cluster.wait_ready()
    wait_until(lambda: _settled(fresh_client), timeout_s=60, what="the aggregator to settle")

    history = history_of(fresh_client, PARTITIONS, set(users))
    expected, _ = expected_statistics(history)
    read_events = Counter(user for user, kind in history if kind == "read")
    reads = [o for o in result.outcomes if o.item.endswith("#read")]
    succeeded = Counter(o.item.split("#")[0] for o in reads if o.code == grpc.StatusCode.OK)
    unknown = Counter(o.item.split("#")[0] for o in reads if o.code.name in TOLERATED)
    at_the_kill = Counter(
        o.item.split("#")[0]
        for o in reads
        if o.code == grpc.StatusCode.OK
        and keys.partition_of(o.item.split("#")[0], PARTITIONS) in failover.partitions
        and o.started <= failover.killed_at
        and o.ended >= failover.killed_at - ANSWERED_BEFORE_THE_KILL_S
    )
    churned = sum(1 for _, kind in history if kind == "delete")
    print(
        f"\naggregator crashes: {len(result.ok())} calls succeeded, errors {result.error_counts()}, "
        f"{churned} deletes and re-creates among them"
    )
    # A read or a churn can meet a concurrent churn of the same user: NOT_FOUND, ALREADY_EXISTS.
    assert set(result.error_counts()) <= TOLERATED | {"NOT_FOUND", "ALREADY_EXISTS"}
    assert churned >= 100
    # Exactly once: the statistics are what the events the cluster holds say, reads since each user's delete.
    assert scores_of(fresh_client, PARTITIONS, users) == expected
    without_event = sum(max(0, succeeded[user] - read_events[user]) for user in users)
    print(
        f"reads answered on the failed-over shard in the {ANSWERED_BEFORE_THE_KILL_S:g} s before the kill: "
        f"{sum(at_the_kill.values())}; acknowledged reads without their event: {without_event}"
    )
    for user in users:
        # Every acknowledged read has its event, but for those its primary answered just before its kill; a
        # read that failed so may or may not have run.
        assert succeeded[user] - at_the_kill[user] <= read_events[user] <= succeeded[user] + unknown[user], user
    for partition in range(PARTITIONS):
        fresh_client.xgroup_destroy(keys.events_key(partition), audit)


def test_profiles_and_statistics_survive_a_restart_of_every_node(
    fresh_system: System, fresh_client: RedisCluster
) -> None:
    """Stop all nodes, start them again from their append-only files: everything is there."""
    system = fresh_system
    run = uuid.uuid4().hex[:6]
    users = [f"r{run}-{i}" for i in range(200)]

    async def write_and_read() -> None:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{system.profile_port}") as channel:
            stub = profile_pb2_grpc.ProfileServiceStub(channel)
            for i, user in enumerate(users):
                await stub.CreateProfile(profile_pb2.CreateProfileRequest(user=user, fields={"i": str(i)}), timeout=5)
                for _ in range(i % 3):
                    await stub.GetProfile(profile_pb2.GetProfileRequest(user=user), timeout=5)

    asyncio.run(write_and_read())
    wait_until(lambda: _settled(fresh_client), timeout_s=30, what="the aggregator to settle")

    def snapshot() -> tuple[dict, dict]:
        profiles = {u: fresh_client.hgetall(keys.profile_key(u, PARTITIONS)) for u in users}
        scores = {u: fresh_client.zscore(keys.reads_key(keys.partition_of(u, PARTITIONS)), u) for u in users}
        return profiles, scores

    before = snapshot()
    assert all(before[0].values())
    system.cluster.stop()
    system.cluster.start()
    wait_until(lambda: all(system.grpc_status(p) == "SERVING" for p in system.grpc_ports.values()), what="health")
    assert snapshot() == before
