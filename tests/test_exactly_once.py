"""Exactly once: several aggregator replicas, one that stalls and is SIGKILLed mid-stream, and a consumer
that died holding entries; in the end every read is counted once, none twice, none lost.

Runs on a system of its own (fresh_system), so the statistics hold nothing but this test's reads.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
from collections import Counter
from dataclasses import dataclass, field

import grpc
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster

from aggregator_svc.aggregator import APPLY_SCRIPT, apply_keys
from common.storage import keys
from localdev.ports import free_ports
from localdev.system import System
from profilemesh.profile.v1 import profile_pb2, profile_pb2_grpc
from profilemesh.reporting.v1 import reporting_pb2, reporting_pb2_grpc
from tests.conftest import PARTITIONS
from tests.helpers import FunctionCall, on_every_partition, read_events, wait_until

GROUP = "aggregator"  # the aggregators' consumer group (the default PROFILEMESH_AGGREGATOR_GROUP)
GHOST = "ghost"
REPLICAS = ("agg-b", "agg-c", "agg-d")
KILLED = "agg-c"
USERS = [f"eo{i:02d}" for i in range(30)]
READS = 3000
CONCURRENCY = 8
TIMEOUT_S = 30
AUDIT = "audit-exactly-once"  # a group that reads nothing, so the stream keeps every event of the test
# A call that failed so may still have run (the service could not confirm it): the stream tells.
UNKNOWN_OUTCOME = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


@dataclass
class Run:
    """What happened while the reads streamed in."""

    reads: Counter = field(default_factory=Counter)  # successful reads per user
    unknown: Counter = field(default_factory=Counter)  # reads whose outcome is unknown, per user
    failures: list[str] = field(default_factory=list)  # any other failure
    ghost_entries: dict[int, list[tuple[str, dict[str, str]]]] = field(default_factory=dict)
    ghost_pending_seen: int = 0  # the most entries XPENDING showed for the ghost
    killed_pending_seen: int = (
        0  # the same for the replica stalled and then SIGKILLed (none: it takes and applies at once)
    )


def pending_of(client: RedisCluster, consumer: str) -> int:
    total = 0
    for summary in on_every_partition(client, PARTITIONS, lambda pipe, p: pipe.xpending(keys.events_key(p), GROUP)):
        for row in summary["consumers"]:
            if row["name"] == consumer:
                total += int(row["pending"])
    return total


def replicas_consuming(client: RedisCluster, names: tuple[str, ...]) -> bool:
    """Every partition has the replicas' group, and every replica has taken from its share (it is a consumer there)."""
    present: set[str] = set()
    every_partition = on_every_partition(
        client, PARTITIONS, lambda pipe, p: pipe.xinfo_consumers(keys.events_key(p), GROUP), raise_on_error=False
    )
    for rows in every_partition:
        if isinstance(rows, Exception):  # no group yet: at 4,096 partitions the replicas' starts take a while
            return False
        present |= {row["name"] for row in rows}
    return set(names) <= present


async def drive(system: System, client: RedisCluster) -> Run:
    """Stream reads while the controller steals entries for a ghost and stalls, then kills, a replica."""
    run = Run()
    rng = random.Random(11)
    plan = [rng.choice(USERS) for _ in range(READS)]
    issued = 0
    controller_done = asyncio.Event()

    async with grpc.aio.insecure_channel(f"127.0.0.1:{system.profile_port}") as channel:
        stub = profile_pb2_grpc.ProfileServiceStub(channel)
        await asyncio.gather(
            *(
                stub.CreateProfile(profile_pb2.CreateProfileRequest(user=user, fields={"n": user}), timeout=TIMEOUT_S)
                for user in USERS
            )
        )

        async def reader() -> None:
            """Reads the plan, and goes on reading until the controller is done: reads stream throughout."""
            nonlocal issued
            while issued < len(plan) or not controller_done.is_set():
                user = plan[issued % len(plan)]
                issued += 1
                try:
                    await stub.GetProfile(profile_pb2.GetProfileRequest(user=user), timeout=TIMEOUT_S)
                except grpc.aio.AioRpcError as error:
                    if error.code() in UNKNOWN_OUTCOME:
                        run.unknown[user] += 1
                    else:
                        run.failures.append(f"{user}: {error.code().name} {error.details()}")
                else:
                    run.reads[user] += 1

        async def controller() -> None:
            aclient = system.cluster.async_client(decode_responses=True)
            try:
                # Initialise before the concurrent reads below: redis-py's racing first commands fail.
                await aclient.initialize()
                while issued < 300:
                    await asyncio.sleep(0.01)
                await steal_for_ghost(aclient)
                await stall_then_kill()
                killed_at = issued
                # Reads go on after the kill: the survivors must pick up where the dead one left off.
                while issued < max(len(plan), killed_at + 300):
                    await asyncio.sleep(0.01)
            finally:
                controller_done.set()
                await aclient.aclose()

        async def steal_for_ghost(aclient: AsyncRedisCluster) -> None:
            """The ghost reads entries as an aggregator would, then dies without acknowledging them.

            Its blocking reads queue with the replicas' own, so new entries reach it within a few events. It reads
            the partitions of the users read (no other has an entry for it), a blocking read and a connection each.
            """
            busy = sorted({keys.partition_of(user, PARTITIONS) for user in USERS})
            for _ in range(10):
                replies = await asyncio.gather(
                    *(aclient.xreadgroup(GROUP, GHOST, {keys.events_key(p): ">"}, count=5, block=2000) for p in busy)
                )
                for partition, reply in zip(busy, replies, strict=True):
                    for _, entries in reply or []:
                        run.ghost_entries.setdefault(partition, []).extend(entries)
                held = sum(len(entries) for entries in run.ghost_entries.values())
                if held >= 30:
                    break
            run.ghost_pending_seen = await asyncio.to_thread(pending_of, client, GHOST)

        async def stall_then_kill() -> None:
            """Stall the replica (SIGSTOP) mid-stream, look at what it holds, then SIGKILL it.

            A replica takes, applies and acknowledges entries in one script, so even stopped at any point
            it holds none pending: what a consumer that dies holding entries leaves is the ghost's case.
            """
            process = system.processes[KILLED]
            os.kill(process.pid, signal.SIGSTOP)
            for _ in range(5):
                seen = await asyncio.to_thread(pending_of, client, KILLED)
                run.killed_pending_seen = max(run.killed_pending_seen, seen)
                await asyncio.sleep(0.1)
            await asyncio.to_thread(system.stop_process, KILLED, signal.SIGKILL)

        await asyncio.gather(controller(), *(reader() for _ in range(CONCURRENCY)))
    return run


def test_every_read_counted_exactly_once(fresh_system: System, fresh_client: RedisCluster) -> None:
    system = fresh_system
    ports = dict(zip(REPLICAS, free_ports(len(REPLICAS)), strict=True))
    try:
        for name, port in ports.items():
            system.start_process(
                name,
                "aggregator_svc",
                PROFILEMESH_AGGREGATOR_LISTEN=f"127.0.0.1:{port}",
                PROFILEMESH_AGGREGATOR_CONSUMER=name,
            )
        for port in ports.values():
            wait_until(lambda port=port: system.grpc_status(port) == "SERVING", timeout_s=30, what="a replica to serve")
        wait_until(lambda: replicas_consuming(fresh_client, REPLICAS), timeout_s=30, what="replicas to consume")
        on_every_partition(
            fresh_client, PARTITIONS, lambda pipe, p: pipe.xgroup_create(keys.events_key(p), AUDIT, "$", True)
        )

        run = asyncio.run(drive(system, fresh_client))

        assert run.failures == []
        events = read_events(fresh_client, PARTITIONS)
        for user in USERS:
            assert run.reads[user] <= events[user] <= run.reads[user] + run.unknown[user], user
        if not run.unknown:
            assert events == run.reads
        total = sum(events.values())
        assert total >= READS and set(events) == set(USERS)
        assert run.ghost_pending_seen >= sum(len(entries) for entries in run.ghost_entries.values()) > 0
        assert run.killed_pending_seen == 0, "a replica held entries it had taken but not applied"

        with grpc.insecure_channel(f"127.0.0.1:{system.reporting_port}") as channel:
            reporting = reporting_pb2_grpc.ReportingServiceStub(channel)

            def settled() -> bool:
                summaries = on_every_partition(
                    fresh_client, PARTITIONS, lambda pipe, p: pipe.xpending(keys.events_key(p), GROUP)
                )
                pending = sum(summary["pending"] for summary in summaries)
                totals = reporting.GetOperationTotals(reporting_pb2.GetOperationTotalsRequest(), timeout=10)
                return pending == 0 and totals.read == total

            # The ghost's entries are reclaimed once idle for 2 s.
            wait_until(settled, timeout_s=30, what="every entry applied and acknowledged")

            # The ghost comes back and applies what it held: XACK returns 0, nothing counts twice.
            apply = FunctionCall(APPLY_SCRIPT)
            for partition, entries in run.ghost_entries.items():
                args = [GROUP] + [entry_id for entry_id, _ in entries]
                assert apply(keys=apply_keys(partition), args=args, client=fresh_client)[:4] == [0, 0, [], 0]

            for user in USERS:
                stats = reporting.GetProfileStats(reporting_pb2.GetProfileStatsRequest(user=user), timeout=10)
                assert stats.reads == events[user], user
            totals = reporting.GetOperationTotals(reporting_pb2.GetOperationTotalsRequest(), timeout=10)
            assert (totals.create, totals.read, totals.update, totals.delete) == (len(USERS), total, 0, 0)
            expected = sorted(events.items(), key=lambda item: (-item[1], item[0]))

            def top() -> list[tuple[str, int]]:
                reply = reporting.GetTopProfiles(reporting_pb2.GetTopProfilesRequest(limit=1000), timeout=10)
                return [(row.user, row.score) for row in reply.results]

            # The top list follows the counts by a copy into its index (docs/architecture.md).
            wait_until(lambda: top() == expected, timeout_s=10, what="the top list to follow the counts")

        assert pending_of(fresh_client, GHOST) == 0 and pending_of(fresh_client, KILLED) == 0
        # The surviving replicas drain and exit cleanly on SIGTERM.
        for name in ("agg-b", "agg-d"):
            assert system.stop_process(name) == 0, name
    finally:
        for name in REPLICAS:
            system.stop_process(name, signal.SIGKILL if name == KILLED else signal.SIGTERM)
