"""Reporting at many partitions (issue 23): exact answers, a cost per call that grows with the primaries, not the
partitions, and one fan-out shared by the calls of a short window.

On a system of the module's own at 256 partitions, with reporting_svc alone on the cluster: the statistics are
written here directly (they are the model the answers must equal): the top list's index (its buckets, which the
aggregator fills from the partitions, tests/test_top_index.py) and the partitions' totals. No aggregator's
blocking reads or profile_svc's traffic add to the primaries' counters the fan-out is measured by. Two reporting_svc processes
serve the same cluster: one with the cache off (each call its own fan-out), one with a window of CACHE_MS.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import cast

import grpc
import pytest
import redis
from redis.cluster import RedisCluster

from common.storage import keys
from common.storage.nodes import key_slot
from localdev import resharding
from localdev.faults import primary_of
from localdev.ports import free_ports
from localdev.system import System
from profilemesh.reporting.v1 import reporting_pb2, reporting_pb2_grpc
from tests.conftest import TEST_SETTINGS, make_system
from tests.helpers import wait_until

PARTITIONS = 256
CACHE_MS = 2000
USERS = 400
TIED = 5
KINDS = ("create", "read", "update", "delete")


@dataclass
class Wide:
    system: System
    admin: RedisCluster
    uncached_port: int
    cached_port: int
    primaries: dict[str, redis.Redis]  # by node name (host:port)

    def ranking(self) -> list[tuple[str, int]]:
        """The model's whole top list, from the cluster's keys: every bucket of the index, by score then name."""
        scores: dict[str, int] = {}
        for bucket in range(keys.top_buckets(PARTITIONS)):
            pairs = cast(list[tuple[str, float]], self.admin.zrange(keys.top_key(bucket), 0, -1, withscores=True))
            for user, score in pairs:
                assert user not in scores, f"{user} counted in two buckets"
                scores[user] = int(score)
        return sorted(scores.items(), key=lambda item: (-item[1], item[0]))

    def totals(self) -> dict[str, int]:
        summed = dict.fromkeys(KINDS, 0)
        for partition in range(PARTITIONS):
            for kind, count in self.admin.hgetall(keys.totals_key(partition)).items():
                if kind in summed:
                    summed[kind] += int(count)
        return summed

    def buckets_on(self) -> dict[str, int]:
        """How many of the index's buckets each primary holds."""
        held = dict.fromkeys(self.primaries, 0)
        for bucket in range(keys.top_buckets(PARTITIONS)):
            node = self.admin.get_node_from_key(keys.top_key(bucket))  # type: ignore[no-untyped-call]
            held[node.name] += 1
        return held

    def counters(self) -> dict[str, tuple[int, int]]:
        """Each primary's FCALL_RO calls run and read events on client connections (INFO; the INFO is one)."""
        found = {}
        for name, node in self.primaries.items():
            fcalls = node.info("commandstats").get("cmdstat_fcall_ro", {}).get("calls", 0)
            found[name] = (int(fcalls), int(node.info("stats")["total_reads_processed"]))
        return found


def bucket_of(user: str) -> str:
    """The index's bucket that holds the user: its partition's."""
    return keys.top_key(keys.top_bucket_of(keys.partition_of(user, PARTITIONS), PARTITIONS))


def top(port: int, limit: int) -> list[tuple[str, int]]:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = reporting_pb2_grpc.ReportingServiceStub(channel).GetTopProfiles(
            reporting_pb2.GetTopProfilesRequest(limit=limit), timeout=10
        )
    return [(row.user, row.score) for row in reply.results]


def serving(system: System, port: int) -> bool:
    return system.grpc_status(port) == "SERVING"


@pytest.fixture(scope="module")
def wide(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Wide]:
    settings = {**TEST_SETTINGS, "PROFILEMESH_PARTITIONS": str(PARTITIONS), "PROFILEMESH_REPORTING_CACHE_MS": "0"}
    system = make_system(tmp_path_factory.mktemp("wide"), settings)
    admin: RedisCluster | None = None
    try:
        system.cluster.start()
        system.migrate()
        admin = system.cluster.client(decode_responses=True)
        admin.set(keys.PARTITIONS_KEY, PARTITIONS)  # what profile_svc records on its first start
        _seed(admin)
        system.start_replica("reporting_svc", 0)
        (cached_port,) = free_ports(1)
        system.start_process(
            "reporting_svc-cached",
            "reporting_svc",
            PROFILEMESH_REPORTING_LISTEN=f"127.0.0.1:{cached_port}",
            PROFILEMESH_REPORTING_CACHE_MS=str(CACHE_MS),
        )
        wait_until(lambda: serving(system, system.reporting_port) and serving(system, cached_port), 60)
        primaries = {}
        for index, port in enumerate(system.cluster.ports):
            node = system.cluster.node(index)
            if node.info("replication")["role"] == "master":
                primaries[f"127.0.0.1:{port}"] = node
        assert len(primaries) == 3
        yield Wide(system, admin, system.reporting_port, cached_port, primaries)
    finally:
        if admin is not None:
            admin.close()
        system.stop()


def _seed(admin: RedisCluster) -> None:
    """USERS readers with few distinct scores (ties within and across partitions), TIED more on top, and
    per-partition totals (some partitions with none, and a type the API does not report)."""
    rng = random.Random(23)
    for index in range(USERS):
        user = f"u{index:03d}"
        admin.zadd(bucket_of(user), {user: rng.randint(1, 12)})
    for partition in range(0, PARTITIONS, 3):
        admin.hset(keys.totals_key(partition), mapping={kind: rng.randint(0, 50) for kind in rng.sample(KINDS, 3)})
    admin.hset(keys.totals_key(1), "unknown", 7)
    # The top of the list: TIED users of one bucket with one score. A bucket's top n by ZREVRANGE are the last
    # names of a tie, so each bucket must also return every user tied with its last for the merge to be exact.
    tied = [user for user in (f"tie{n:03d}" for n in range(10_000)) if keys.partition_of(user, PARTITIONS) == 7]
    admin.zadd(keys.top_key(keys.top_bucket_of(7, PARTITIONS)), dict.fromkeys(tied[:TIED], 13))


def test_top_lists_and_totals_equal_the_model_at_every_limit(wide: Wide) -> None:
    model = wide.ranking()
    assert len(model) == USERS + TIED and len({score for _, score in model}) <= 13  # ties everywhere
    for limit in range(1, len(model) + 6):
        assert top(wide.uncached_port, limit) == model[:limit], limit
    # The cached process: each limit a prefix of the list of the largest limit fetched.
    assert top(wide.cached_port, 1000) == model
    for limit in range(1, len(model) + 6):
        assert top(wide.cached_port, limit) == model[:limit], limit
    with grpc.insecure_channel(f"127.0.0.1:{wide.uncached_port}") as channel:
        totals = reporting_pb2_grpc.ReportingServiceStub(channel).GetOperationTotals(
            reporting_pb2.GetOperationTotalsRequest(), timeout=10
        )
    assert {kind: getattr(totals, kind) for kind in KINDS} == wide.totals()


def test_one_call_sends_one_function_call_per_primary(wide: Wide) -> None:
    """A top list is one FCALL_RO per primary that holds a bucket of the index, reading every bucket it holds (16
    buckets here, for 256 partitions), in one read event each."""
    calls = 5
    held = wide.buckets_on()
    model = wide.ranking()[:10]
    before = wide.counters()
    answers = [top(wide.uncached_port, 10) for _ in range(calls)]
    after = wide.counters()
    assert answers == [model] * calls
    fcalls = {name: after[name][0] - before[name][0] for name in held}
    reads = {name: after[name][1] - before[name][1] for name in held}
    print(f"{calls} calls at {PARTITIONS} partitions {held}: FCALL_RO per primary {fcalls}, read events {reads}")
    assert fcalls == {name: calls if count else 0 for name, count in held.items()}
    # One pipeline a call (a few KB: one read), the INFO of this measure, and a replica's REPLCONF ACK a second.
    assert all(count <= 2 * calls + 4 for count in reads.values()), reads


def test_concurrent_calls_share_one_fan_out_and_a_later_call_reads_again(wide: Wide) -> None:
    async def together(count: int, limit: int) -> list[list[tuple[str, int]]]:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{wide.cached_port}") as channel:
            stub = reporting_pb2_grpc.ReportingServiceStub(channel)
            replies = await asyncio.gather(
                *(
                    stub.GetTopProfiles(reporting_pb2.GetTopProfilesRequest(limit=limit), timeout=10)
                    for _ in range(count)
                )
            )
        return [[(row.user, row.score) for row in reply.results] for reply in replies]

    def fan_outs(before: dict[str, tuple[int, int]]) -> float:
        after = wide.counters()
        holding = [name for name, count in wide.buckets_on().items() if count]
        return sum(after[name][0] - before[name][0] for name in after) / len(holding)  # a call per primary

    model = wide.ranking()
    time.sleep(CACHE_MS / 1000 + 0.1)  # nothing cached from an earlier test
    before = wide.counters()
    answers = asyncio.run(together(50, 20))
    assert answers == [model[:20]] * 50
    assert fan_outs(before) == 1
    assert top(wide.cached_port, 7) == model[:7]  # within the window, a smaller limit: its prefix
    assert fan_outs(before) == 1

    # After the window: a fresh fan-out, which sees a change.
    wide.admin.zadd(bucket_of("u399"), {"u399": model[0][1] + 1})
    time.sleep(CACHE_MS / 1000 + 0.1)
    before = wide.counters()
    answer = top(wide.cached_port, 3)
    assert answer[0] == ("u399", model[0][1] + 1) and answer == wide.ranking()[:3]
    assert fan_outs(before) == 1


def test_concurrent_totals_share_one_fan_out_and_a_later_call_reads_again(wide: Wide) -> None:
    """GetOperationTotals reads every partition too: its calls share fan-outs as the top lists' do."""

    async def together(count: int) -> list[dict[str, int]]:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{wide.cached_port}") as channel:
            stub = reporting_pb2_grpc.ReportingServiceStub(channel)
            replies = await asyncio.gather(
                *(stub.GetOperationTotals(reporting_pb2.GetOperationTotalsRequest(), timeout=10) for _ in range(count))
            )
        return [{kind: getattr(reply, kind) for kind in KINDS} for reply in replies]

    def fan_outs(before: dict[str, tuple[int, int]]) -> float:
        after = wide.counters()
        return sum(after[name][0] - before[name][0] for name in after) / len(after)  # a call per primary

    time.sleep(CACHE_MS / 1000 + 0.1)  # nothing cached from an earlier test
    before = wide.counters()
    assert asyncio.run(together(50)) == [wide.totals()] * 50
    assert fan_outs(before) == 1

    # After the window: a fresh fan-out, which sees a change.
    wide.admin.hincrby(keys.totals_key(7), "update", 3)
    time.sleep(CACHE_MS / 1000 + 0.1)
    before = wide.counters()
    assert asyncio.run(together(1)) == [wide.totals()]
    assert fan_outs(before) == 1


def test_a_watch_sees_a_change_made_within_the_cache_window(wide: Wide) -> None:
    """The poller reads the top list through the cache, but never one read before the totals that told it of a
    change: a list cached just before the change would otherwise be sent with the new totals and kept."""

    async def scenario() -> list[tuple[str, int]]:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{wide.cached_port}") as channel:
            stub = reporting_pb2_grpc.ReportingServiceStub(channel)
            call = stub.WatchTopProfiles(reporting_pb2.WatchTopProfilesRequest(limit=3))
            first = await call.read()
            assert isinstance(first, reporting_pb2.WatchTopProfilesResponse)
            await stub.GetTopProfiles(reporting_pb2.GetTopProfilesRequest(limit=3), timeout=10)  # cached: the old list
            user = "u123"
            partition = keys.partition_of(user, PARTITIONS)
            leader_score = int(first.results[0].score)
            wide.admin.zadd(bucket_of(user), {user: leader_score + 5})
            wide.admin.hincrby(keys.totals_key(partition), "read", 1)
            deadline = time.monotonic() + CACHE_MS / 1000 * 3
            seen: list[tuple[str, int]] = []
            while time.monotonic() < deadline:
                try:
                    message = await asyncio.wait_for(call.read(), deadline - time.monotonic())
                except TimeoutError:
                    break
                assert isinstance(message, reporting_pb2.WatchTopProfilesResponse)
                seen = [(row.user, row.score) for row in message.results]
                if seen and seen[0] == (user, leader_score + 5):
                    break
            call.cancel()
            return seen

    seen = asyncio.run(scenario())
    assert seen == wide.ranking()[:3]


def _totals_via(port: int) -> dict[str, int]:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        totals = reporting_pb2_grpc.ReportingServiceStub(channel).GetOperationTotals(
            reporting_pb2.GetOperationTotalsRequest(), timeout=10
        )
    return {kind: getattr(totals, kind) for kind in KINDS}


def test_a_bucket_or_partition_whose_slot_is_migrating_is_read_on_its_own(wide: Wide) -> None:
    """Halfway through a slot's migration, a key of it that has gone to the target fails the source node's
    function, so that key is read on its own (following the ASK), and the answer stays exact: a bucket of the
    index for the top list, a partition's totals for the totals. Once the slot has moved, the target's function
    answers for it."""
    cluster = wide.system.cluster
    partition = 11
    user = next(name for name in (f"migrating{n}" for n in range(10_000)) if keys.partition_of(name, PARTITIONS) == 11)
    bucket = bucket_of(user)
    wide.admin.zadd(bucket, {user: 1000})  # the top of the list
    wide.admin.hincrby(keys.totals_key(partition), "read", 5)
    model, totals = wide.ranking(), wide.totals()
    assert model[0] == (user, 1000)
    for moving, answer, expected in (
        (bucket, lambda: top(wide.uncached_port, 20), model[:20]),
        (keys.totals_key(partition), lambda: _totals_via(wide.uncached_port), totals),
    ):
        source = primary_of(cluster, moving)
        target = next(index for index in resharding.primaries(cluster) if index != source)
        slot = key_slot(moving)
        try:
            resharding.begin_migration(cluster, slot, source, target, [moving])
            with cluster.node(source) as node, pytest.raises(redis.exceptions.AskError):
                node.exists(moving)  # gone to the target: ASK
            assert answer() == expected, moving
        finally:
            resharding.migrate_slot(cluster, slot, source, target)  # the rest of the slot's keys, and its new owner
        wait_until(lambda: primary_of(cluster, moving) == target, 10, what="the slot to move")  # noqa: B023
        assert answer() == expected, moving
