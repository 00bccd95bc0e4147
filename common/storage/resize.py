"""Changing a deployment's partition count (`profilemesh cluster resize`, docs/deploying.md §6): the admin fills
a new keyspace (the layout's next generation, common/storage/keys.py tag) from the old one, checks it, switches
the layout record, and removes the old keyspace.

It runs while the services are stopped, after the aggregator has applied every event: what the old keyspace
holds is then final, so the copy is exact and each step can be run again after a failure. It refuses to start
otherwise, and refuses to switch if any stream grew while it copied (a service was still writing). The services
refuse to start while the record says a resize runs, and start again with the new PROFILEMESH_PARTITIONS.

What is copied: profiles (their fields), each user's reads and tombstones to the user's new partition, and each
old partition's totals added into one new partition (the totals are per partition, their sum is what is
reported). What is not: the event streams, whose events are all applied; the change feed's resume tokens name
the old layout and are refused (its subscribers start from the present).
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio.cluster import ClusterNode, RedisCluster

from common.errors import ClusterUnavailable
from common.runtime.config import Settings
from common.storage import acl, keys
from common.storage.connection import CLUSTER_SLOTS
from common.storage.errors import translated
from common.storage.internals import covered_slots
from common.storage.nodes import async_operator_cluster
from common.storage.replies import text

TIMEOUT_S = 30.0
BATCH = 500  # keys per pipeline
CONCURRENT = 32  # partitions read at once
PROFILES = f"{keys.PROFILE_PREFIX}{{p*}}:*"  # what SCAN looks for: every layout's profiles (the caller's are kept)
MAXIMUM_PARTITIONS = 4096

# Compare and set the layout record: a second resize, or a service recording a first layout, can't interleave.
_SWAP = "if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('SET', KEYS[1], ARGV[2]) return 1 end return 0"


class ResizeRefused(Exception):
    """The cluster is not in a state a resize may start from, or changed under it: nothing was switched."""


@dataclass
class Tally:
    """What one keyspace holds, to check that the copy holds the same."""

    profiles: int = 0
    users_with_reads: int = 0
    reads: int = 0
    tombstones: int = 0
    totals: dict[str, int] = field(default_factory=dict)


@dataclass
class Report:
    source: keys.Layout
    target: keys.Layout
    copied: Tally
    check: Tally
    seconds: float
    removed_keys: int


async def resize(settings: Settings, partitions: int, *, progress: Callable[[str], None] = lambda _: None) -> Report:
    """Resize the deployment's partitions to `partitions` (see the module's docstring); ResizeRefused, or another
    StorageError, with nothing switched when it can't."""
    if not 1 <= partitions <= MAXIMUM_PARTITIONS:
        raise ResizeRefused(f"--partitions must be from 1 to {MAXIMUM_PARTITIONS}, not {partitions}")
    with translated():
        client = async_operator_cluster(settings, TIMEOUT_S, decode_responses=True)
        try:
            await client.initialize()
            return await _resize(client, settings, partitions, progress)
        finally:
            await client.aclose()


async def _resize(client: RedisCluster, settings: Settings, partitions: int, progress: Callable[[str], None]) -> Report:
    started = time.monotonic()
    covered = covered_slots(client)
    if covered < CLUSTER_SLOTS:
        raise ClusterUnavailable(f"the cluster serves {covered} of {CLUSTER_SLOTS} slots; resize once it serves all")
    record = await client.get(keys.PARTITIONS_KEY)
    if record is None:
        raise ResizeRefused("the cluster has no partition layout yet: start the services once with the count wanted")
    record = text(record)
    layout = keys.parse_layout(record)
    if layout.resizing_to is not None:  # an earlier run stopped part way: finish what it started
        source, target = layout._replace(resizing_to=None), layout.resizing_to
        if target.partitions != partitions:
            raise ResizeRefused(
                f"a resize from {source.partitions} to {target.partitions} partitions is under way; run it again "
                f"with --partitions {target.partitions} to finish it"
            )
        progress(f"finishing the resize from {source.partitions} to {target.partitions} partitions")
    else:
        source, target = layout, keys.Layout(partitions, layout.generation + 1)
        if partitions == source.partitions:
            raise ResizeRefused(f"the deployment has {partitions} partitions already")
        await _check_quiet(client, settings, source)
        await _swap(client, record, keys.layout_record(source._replace(resizing_to=target)))
        progress(f"resizing from {source.partitions} to {target.partitions} partitions")
    record = keys.layout_record(source._replace(resizing_to=target))
    added_before = await _events_added(client, source)
    copied = await _copy(client, source, target, progress)
    check = await _tally(client, target)
    if check != copied:
        raise ResizeRefused(f"the new keyspace does not hold what was copied: {check} != {copied}; run it again")
    if await _events_added(client, source) != added_before:
        raise ResizeRefused("events were written while the keyspace was copied: stop every service, run it again")
    await _swap(client, record, keys.layout_record(target))
    progress(f"switched: start the services with PROFILEMESH_PARTITIONS={target.partitions}")
    removed = await _remove(client, source)
    return Report(source, target, copied, check, time.monotonic() - started, removed)


async def _swap(client: RedisCluster, expected: str, record: str) -> None:
    if not await client.eval(_SWAP, 1, keys.PARTITIONS_KEY, expected, record):
        raise ResizeRefused(f"the partition layout record changed under the resize (expected {expected!r})")


async def _check_quiet(client: RedisCluster, settings: Settings, source: keys.Layout) -> None:
    """Refuse unless no service is connected, no aggregator replica is live, and every event was applied."""
    connected = []
    for node in client.get_nodes():
        for line in text(await client.execute_command("CLIENT", "LIST", target_nodes=node)).splitlines():
            user = dict(pair.split("=", 1) for pair in line.split() if "=" in pair).get("user")
            if user in acl.USERS.values():
                connected.append(f"{user} on {node.name}")
    if connected:
        raise ResizeRefused(f"stop every service first: still connected: {', '.join(sorted(set(connected)))}")
    seconds, microseconds = await client.time()
    now_ms = int(seconds) * 1000 + int(microseconds) // 1000
    if await client.zrangebyscore(keys.AGGREGATORS_KEY, now_ms, "+inf"):
        raise ResizeRefused("an aggregator replica is still live: stop it first (its word lasts 3 heartbeats)")
    behind: list[int] = []

    async def look(partition: int) -> None:
        stream = keys.events_key(partition, source.generation)
        if not await client.exists(stream):
            return
        last = (await client.xinfo_stream(stream))["last-generated-id"]
        groups = {group["name"]: group for group in await client.xinfo_groups(stream)}
        group = groups.get(settings.aggregator_group)
        recounts = await client.hmget(keys.recount_key(partition, source.generation), "head", "tail")
        applied = last == "0-0" or (  # never written to, or every entry delivered and acknowledged
            group is not None and group["pending"] == 0 and group["last-delivered-id"] == last
        )
        if not applied or int(recounts[0] or 0) < int(recounts[1] or 0):
            behind.append(partition)

    await _each_partition(source, look)
    behind.sort()
    if behind:
        raise ResizeRefused(
            f"the aggregator has events left to apply in {len(behind)} partitions (first: {behind[:5]}): run the "
            "aggregator alone until its lag is 0, stop it, and resize"
        )


async def _events_added(client: RedisCluster, layout: keys.Layout) -> list[int]:
    added = [0] * layout.partitions

    async def read(partition: int) -> None:
        stream = keys.events_key(partition, layout.generation)
        if await client.exists(stream):
            added[partition] = int((await client.xinfo_stream(stream))["entries-added"])

    await _each_partition(layout, read)
    return added


async def _each_partition(layout: keys.Layout, work: Callable[[int], Awaitable[None]]) -> None:
    """`work` on every partition of the layout, CONCURRENT of them at a time."""
    for start in range(0, layout.partitions, CONCURRENT):
        await asyncio.gather(*(work(p) for p in range(start, min(start + CONCURRENT, layout.partitions))))


async def _each_profile_batch(
    client: RedisCluster, layout: keys.Layout, work: Callable[[list[str]], Awaitable[int]]
) -> int:
    """`work` on the layout's profile keys a batch at a time, found by SCAN of every primary, the primaries at
    once; the sum of what it returned."""

    async def on(node: ClusterNode) -> int:
        done, cursor = 0, "0"
        while True:
            cursor, found = await node.execute_command("SCAN", cursor, "MATCH", PROFILES, "COUNT", BATCH)
            mine = [key for key in found if _is_profile_of(key, layout)]
            if mine:
                done += await work(mine)
            if str(cursor) == "0":
                return done

    return sum(await asyncio.gather(*(on(node) for node in client.get_primaries())))


async def _count(batch: list[str]) -> int:
    return len(batch)


def _is_profile_of(key: str, layout: keys.Layout) -> bool:
    user = key.partition("}:")[2]
    return bool(user) and key == keys.profile_key(user, layout.partitions, layout.generation)


def _user_of(key: str) -> str:
    return key.partition("}:")[2]


async def _copy(
    client: RedisCluster, source: keys.Layout, target: keys.Layout, progress: Callable[[str], None]
) -> Tally:
    tally = Tally()

    async def copy(batch: list[str]) -> int:
        profiles = await _pipelined(client, [("HGETALL", key) for key in batch])
        writes = []
        for key, profile in zip(batch, profiles, strict=True):
            new_key = keys.profile_key(_user_of(key), target.partitions, target.generation)
            writes.append(("HSET", new_key, *_flat(_texts(profile))))  # a profile has a field at least
        await _pipelined(client, writes)
        return len(batch)

    tally.profiles = await _each_profile_batch(client, source, copy)
    progress(f"copied {tally.profiles} profiles")
    totals: dict[int, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    old, new = source.generation, target.generation

    async def carry(partition: int) -> None:
        reads = await _sorted_set(client, keys.reads_key(partition, old))
        tombstones = _texts(await client.hgetall(keys.deleted_key(partition, old)))
        deleted_at = await _sorted_set(client, keys.deleted_at_key(partition, old))
        for kind, count in _texts(await client.hgetall(keys.totals_key(partition, old))).items():
            totals[partition % target.partitions][kind] += int(count)
        writes = [
            *_by_partition(reads, target, lambda p: ("ZADD", keys.reads_key(p, new)), swap=True),
            *_by_partition(tombstones.items(), target, lambda p: ("HSET", keys.deleted_key(p, new))),
            *_by_partition(deleted_at, target, lambda p: ("ZADD", keys.deleted_at_key(p, new)), swap=True),
        ]
        await _pipelined(client, writes)
        tally.users_with_reads += len(reads)
        tally.reads += sum(int(score) for _, score in reads)
        tally.tombstones += len(tombstones)

    await _each_partition(source, carry)
    writes = []
    for partition, counts in totals.items():
        writes.append(("HSET", keys.totals_key(partition, new), *_flat({kind: str(n) for kind, n in counts.items()})))
        for kind, number in counts.items():
            tally.totals[kind] = tally.totals.get(kind, 0) + number
    await _pipelined(client, writes)
    progress(f"copied the statistics of {tally.users_with_reads} users and {tally.tombstones} tombstones")
    return tally


Command = tuple[Any, ...]


async def _pipelined(client: RedisCluster, commands: list[Command]) -> list[Any]:
    """The commands' replies, sent in pipelines of BATCH (each split by node by the client)."""
    replies: list[Any] = []
    for start in range(0, len(commands), BATCH):
        pipe = client.pipeline()
        for command in commands[start : start + BATCH]:
            pipe.execute_command(*command)
        replies.extend(await pipe.execute())
    return replies


def _texts(reply: Any) -> dict[str, str]:
    return {text(name): text(value) for name, value in reply.items()}


def _flat(mapping: dict[str, str]) -> list[str]:
    return [item for pair in mapping.items() for item in pair]


async def _sorted_set(client: RedisCluster, key: str) -> list[tuple[str, str]]:
    """(member, score) of every member, scores as the server wrote them (ZADD takes them back exactly)."""
    return [
        (text(member), text(score)) async for member, score in client.zscan_iter(key, count=BATCH, score_cast_func=text)
    ]


def _by_partition(
    items: Iterable[tuple[str, str]], target: keys.Layout, command_of: Callable[[int], Command], swap: bool = False
) -> list[Command]:
    """One command per partition of `target` writing each (user, value) to the user's partition: HSET takes
    user value pairs; ZADD (`swap`) score member pairs."""
    grouped: dict[int, list[str]] = defaultdict(list)
    for user, value in items:
        grouped[keys.partition_of(user, target.partitions)].extend((value, user) if swap else (user, value))
    return [(*command_of(partition), *flat) for partition, flat in grouped.items()]


async def _tally(client: RedisCluster, layout: keys.Layout) -> Tally:
    tally = Tally()
    tally.profiles = await _each_profile_batch(client, layout, _count)

    async def count(partition: int) -> None:
        reads = await _sorted_set(client, keys.reads_key(partition, layout.generation))
        tally.users_with_reads += len(reads)
        tally.reads += sum(int(score) for _, score in reads)
        tombstones = await client.hlen(keys.deleted_key(partition, layout.generation))
        tally.tombstones += tombstones  # not `+= await`: that reads the sum before the await, losing others' adds
        for kind, number in _texts(await client.hgetall(keys.totals_key(partition, layout.generation))).items():
            tally.totals[kind] = tally.totals.get(kind, 0) + int(number)

    await _each_partition(layout, count)
    return tally


async def _remove(client: RedisCluster, layout: keys.Layout) -> int:
    """Remove the old keyspace, once the record names the new one."""

    async def unlink(batch: list[str]) -> int:
        return sum(int(reply) for reply in await _pipelined(client, [("UNLINK", key) for key in batch]))

    removed = await _each_profile_batch(client, layout, unlink)
    unlinks: list[Command] = [
        ("UNLINK", key) for p in range(layout.partitions) for key in keys.partition_keys(p, layout.generation)
    ]
    unlinks += [
        ("UNLINK", key_of(bucket, layout.generation))
        for bucket in range(keys.top_buckets(layout.partitions))
        for key_of in (keys.top_key, keys.top_versions_key)
    ]
    return removed + sum(int(reply) for reply in await _pipelined(client, unlinks))
