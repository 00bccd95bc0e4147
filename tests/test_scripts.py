"""Unit tests of the Lua scripts against the real cluster, plus pure tests of key names and validation.

Script tests use keys under their own hash tag ({tunit-<uuid>}), so the shared aggregator never
touches them and every key of one test lives in one slot, as a script in a cluster requires.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from redis.cluster import RedisCluster
from redis.crc import key_slot

from aggregator_svc.aggregator import APPLY_SCRIPT, RECOUNT_SCRIPT, TRIM_SCRIPT
from common.errors import InvalidArgument
from common.rpc.validation import MAX_FIELDS, MAX_VALUE_BYTES, check_fields, check_user
from common.storage import keys
from common.storage.cluster import Cluster
from localdev.system import System
from profilemesh.reporting.v1 import reporting_pb2, reporting_pb2_grpc
from reporting_svc.reports import Reports
from tests.conftest import PARTITIONS
from tests.helpers import FunctionCall

ROOT = Path(__file__).resolve().parent.parent
TOP_READERS = ROOT / "reporting_svc" / "scripts" / "top_readers.lua"
WRITE_PROFILE = ROOT / "profile_svc" / "scripts" / "write_profile.lua"
GROUP = "g"


@dataclass
class Partition:
    """Keys of one made-up partition, named like the real ones but under a tag of the test's own."""

    client: RedisCluster
    tag: str

    @property
    def events(self) -> str:
        return f"events:{self.tag}"

    @property
    def reads(self) -> str:
        return f"stats:reads:{self.tag}"

    @property
    def totals(self) -> str:
        return f"stats:totals:{self.tag}"

    @property
    def deleted(self) -> str:
        return f"stats:deleted:{self.tag}"

    @property
    def deleted_at(self) -> str:
        return f"stats:deleted-at:{self.tag}"

    @property
    def recount(self) -> str:
        return f"stats:recount:{self.tag}"

    @property
    def wake(self) -> str:
        return f"wake:{self.tag}"

    @property
    def outbox(self) -> str:
        return f"stats:top-outbox:{self.tag}"

    @property
    def all_keys(self) -> list[str]:
        return [self.events, self.reads, self.totals, self.deleted, self.deleted_at, self.recount, self.outbox]

    def add(self, user: str, kind: str, entry_id: str = "*") -> str:
        return self.client.xadd(self.events, {"user": user, "type": kind, "ts": "0"}, id=entry_id)

    def deliver(self, consumer: str = "c", count: int | None = None) -> list[str]:
        """XREADGROUP '>' for `consumer`: the entries become pending, as when an aggregator reads them."""
        reply = self.client.xreadgroup(GROUP, consumer, {self.events: ">"}, count=count)
        return [entry_id for _, entries in reply for entry_id, _ in entries]

    def apply(self, script: FunctionCall, entry_ids: list[str]) -> int:
        """Run apply_events.lua on these entries as the aggregator does; returns how many it applied."""
        applied, gone, malformed, queued, _ = script(keys=self.all_keys, args=[GROUP, *entry_ids], client=self.client)
        assert gone == 0 and malformed == []
        while queued:  # a recount left to recount_step.lua: walk it, as the aggregator does
            recount = FunctionCall(RECOUNT_SCRIPT)
            _, queued, _ = recount(
                keys=[self.events, self.reads, self.recount, self.outbox], args=[GROUP, 500], client=self.client
            )
        return int(applied)

    def score(self, user: str) -> float | None:
        return self.client.zscore(self.reads, user)


@pytest.fixture
def part(redis_client: RedisCluster) -> Iterator[Partition]:
    partition = Partition(redis_client, f"{{tunit-{uuid.uuid4().hex}}}")
    redis_client.xgroup_create(partition.events, GROUP, id="0", mkstream=True)
    yield partition
    for key in [*partition.all_keys, partition.wake, f"profile:{partition.tag}:ann"]:
        redis_client.delete(key)


@pytest.fixture(scope="module")
def apply_script(redis_client: RedisCluster) -> FunctionCall:
    """The function the system's start loaded (profilemesh cluster migrate), called as the admin."""
    return FunctionCall(APPLY_SCRIPT, redis_client)


@pytest.fixture(scope="module")
def trim_script(redis_client: RedisCluster) -> FunctionCall:
    return FunctionCall(TRIM_SCRIPT, redis_client)


@pytest.fixture(scope="module")
def top_script(redis_client: RedisCluster) -> FunctionCall:
    return FunctionCall(TOP_READERS, redis_client)


# ---------------------------------------------------------------- apply_events.lua


def _publishes(part: Partition) -> int:
    """SPUBLISH calls so far on the node serving the partition (INFO commandstats)."""
    stats = part.client.info("commandstats", target_nodes=part.client.get_node_from_key(part.events))
    return int(stats.get("cmdstat_spublish", {}).get("calls", 0))


def test_a_take_that_finds_nothing_arms_the_wake_flag_and_the_next_event_alone_wakes(
    part: Partition, apply_script: FunctionCall
) -> None:
    """apply_events.lua arms the flag only when it finds nothing; the next event's script (helpers.lua) clears it
    and publishes once; the events after it, while the aggregator is busy, publish nothing."""
    take_keys = [*part.all_keys, part.wake]
    write = FunctionCall(WRITE_PROFILE, part.client)
    profile = f"profile:{part.tag}:ann"
    part.add("bob", "read")
    assert apply_script(keys=take_keys, args=[GROUP, ">", "c", 10])[2] == 1
    assert part.client.get(part.wake) is None, "a take that found entries arms nothing"
    assert apply_script(keys=take_keys, args=[GROUP, ">", "c", 10])[2] == 0
    assert part.client.get(part.wake) == "1", "a take that found nothing arms the flag"
    before = _publishes(part)
    assert write(keys=[profile, part.events, part.wake], args=["ann", "create", "email", "a@x"]) == 1
    assert (part.client.get(part.wake), _publishes(part) - before) == ("0", 1)
    assert write(keys=[profile, part.events, part.wake], args=["ann", "update", "email", "b@x"]) == 1
    assert (part.client.get(part.wake), _publishes(part) - before) == ("0", 1), "no second wake-up"
    assert part.client.xlen(part.events) == 3


def test_apply_counts_each_pending_entry_once(part: Partition, apply_script: FunctionCall) -> None:
    ids = [part.add(user, "read") for user in ("ann", "ann", "bob", "ann")]
    ids.append(part.add("bob", "update"))
    assert part.deliver() == ids

    assert part.apply(apply_script, ids) == 5
    # The same batch again (a retry after a lost reply): XACK returns 0 for every entry.
    assert part.apply(apply_script, ids) == 0
    assert part.score("ann") == 3 and part.score("bob") == 1
    assert part.client.hgetall(part.totals) == {"read": "4", "update": "1"}
    assert part.client.xpending(part.events, GROUP)["pending"] == 0


def test_take_reads_applies_and_acknowledges_the_next_entries_in_one_script(
    part: Partition, apply_script: FunctionCall
) -> None:
    """The aggregator's hot path: '>' takes the group's next entries itself; their content never leaves the node."""
    ids = [part.add(user, kind) for user, kind in (("ann", "read"), ("bob", "read"), ("ann", "update"))]
    later = part.add("ann", "read")

    assert apply_script(keys=part.all_keys, args=[GROUP, ">", "c", 3], client=part.client) == [
        3,
        0,
        3,
        ids[-1],
        [],
        0,
        -1,
    ]
    assert part.client.xpending(part.events, GROUP)["pending"] == 0  # acknowledged in the same script
    assert apply_script(keys=part.all_keys, args=[GROUP, ">", "c", 3], client=part.client) == [
        1,
        0,
        1,
        later,
        [],
        0,
        -1,
    ]
    # Nothing new: nothing applied, and the group's last delivered id, past which to wait for entries.
    assert apply_script(keys=part.all_keys, args=[GROUP, ">", "c", 3], client=part.client) == [
        0,
        0,
        0,
        later,
        [],
        0,
        -1,
    ]
    assert part.score("ann") == 2 and part.score("bob") == 1
    assert part.client.hgetall(part.totals) == {"read": "3", "update": "1"}
    # Entries another consumer was delivered are not taken again, and a take leaves them pending for it.
    held = part.add("bob", "read")
    assert part.deliver("other") == [held]
    assert apply_script(keys=part.all_keys, args=[GROUP, ">", "c", 3], client=part.client) == [0, 0, 0, held, [], 0, -1]
    assert part.apply(apply_script, [held]) == 1
    assert part.score("bob") == 2


def test_take_recounts_after_a_delete_like_an_apply_by_id(part: Partition, apply_script: FunctionCall) -> None:
    """A delete taken with '>' resets its user's score; reads of the re-created user after it count from 0."""
    part.add("ann", "create"), part.add("ann", "read"), part.add("ann", "read")
    assert apply_script(keys=part.all_keys, args=[GROUP, ">", "c", 10], client=part.client)[:3] == [3, 0, 3]
    assert part.score("ann") == 2
    delete = part.add("ann", "delete")
    part.add("ann", "create"), part.add("ann", "read")
    assert apply_script(keys=part.all_keys, args=[GROUP, ">", "c", 10], client=part.client)[:3] == [3, 0, 3]
    assert part.score("ann") == 1
    assert part.client.hget(part.deleted, "ann") == delete


def test_apply_skips_undelivered_and_already_acknowledged_entries(part: Partition, apply_script: FunctionCall) -> None:
    first, second = part.add("ann", "read"), part.add("ann", "read")
    assert part.deliver() == [first, second]
    undelivered = part.add("ann", "read")
    part.client.xack(part.events, GROUP, first)  # acknowledged by someone else: not pending any more

    assert part.apply(apply_script, [first, second, undelivered]) == 1
    assert part.score("ann") == 1
    assert part.client.hgetall(part.totals) == {"read": "1"}


def test_apply_slow_consumer_and_claimer_race(part: Partition, apply_script: FunctionCall) -> None:
    """A stalled consumer's entries are claimed by another; whichever applies second applies nothing."""
    ids = [part.add("ann", "read") for _ in range(3)]
    assert part.deliver("slow") == ids
    claimed = part.client.xautoclaim(part.events, GROUP, "claimer", min_idle_time=0, start_id="0-0")[1]
    assert [entry_id for entry_id, _ in claimed] == ids

    assert part.apply(apply_script, ids) == 3  # the claimer
    assert part.apply(apply_script, ids) == 0  # the slow consumer wakes up
    assert part.score("ann") == 3


def test_apply_read_older_than_delete_does_not_resurrect(part: Partition, apply_script: FunctionCall) -> None:
    create, read_before, delete = part.add("ann", "create"), part.add("ann", "read"), part.add("ann", "delete")
    recreate, read_after = part.add("ann", "create"), part.add("ann", "read")
    part.deliver()

    # Batches applied out of order (two replicas): the delete lands before the older read.
    assert part.apply(apply_script, [delete]) == 1
    assert part.apply(apply_script, [create, read_before]) == 2
    assert part.score("ann") is None
    assert part.client.hget(part.deleted, "ann") == delete

    # A read after the re-create counts, starting again from 0.
    assert part.apply(apply_script, [recreate, read_after]) == 2
    assert part.score("ann") == 1
    assert part.client.hgetall(part.totals) == {"create": "2", "read": "2", "delete": "1"}


def test_apply_delete_after_newer_reads_keeps_them(part: Partition, apply_script: FunctionCall) -> None:
    """A delete applied after reads that follow it (of the re-created user) removes only the older reads."""
    create, read_1 = part.add("ann", "create"), part.add("ann", "read")
    delete = part.add("ann", "delete")
    recreate, read_2, read_3 = part.add("ann", "create"), part.add("ann", "read"), part.add("ann", "read")
    other = part.add("bob", "read")
    part.deliver()
    undelivered = part.add("ann", "read")

    assert part.apply(apply_script, [recreate, read_2, other]) == 3
    assert part.apply(apply_script, [create, read_1]) == 2
    assert part.score("ann") == 2
    assert part.apply(apply_script, [delete]) == 1
    assert part.score("ann") == 1  # read_2 only; read_1 went with the delete
    assert part.apply(apply_script, [read_3]) == 1
    assert part.score("ann") == 2
    assert part.deliver() == [undelivered]
    assert part.apply(apply_script, [undelivered]) == 1
    assert part.score("ann") == 3
    assert part.score("bob") == 1


def test_apply_reclaimed_delete_keeps_reads_applied_between_its_batch_entries(
    part: Partition, apply_script: FunctionCall
) -> None:
    """A reclaimed batch has gaps: reads of the re-created user that another consumer applied lie between its entries."""
    c1, r1, delete, c2, r2, r3 = (
        part.add("ann", kind) for kind in ("create", "read", "delete", "create", "read", "read")
    )
    assert part.deliver("a", count=3) == [c1, r1, delete]  # a dies holding them
    assert part.deliver("b", count=2) == [c2, r2]
    assert part.apply(apply_script, [c2, r2]) == 2
    assert part.score("ann") == 1
    assert part.deliver("c", count=1) == [r3]  # c dies too
    _, claimed, *_ = part.client.xautoclaim(part.events, GROUP, "e", min_idle_time=0, start_id="0-0")
    reclaimed = [entry_id for entry_id, _ in claimed]
    assert reclaimed == [c1, r1, delete, r3]  # its last id is the group's last delivered one

    assert part.apply(apply_script, reclaimed) == 4
    assert part.score("ann") == 2  # r2 and r3, the reads of ann's second life
    assert part.client.hgetall(part.totals) == {"create": "2", "read": "3", "delete": "1"}


def test_apply_reads_what_the_stream_holds_under_an_id(part: Partition, apply_script: FunctionCall) -> None:
    """The script takes ids only: an id reused after a failover lost the stream's tail means its new entry."""
    ann = part.add("ann", "read")
    part.deliver("stale")  # a replica delivered ann's read ...
    part.client.delete(part.events)  # ... then the stream lost its tail (a promoted replica never had it)
    part.client.xgroup_create(part.events, GROUP, id="0", mkstream=True)
    assert part.add("bob", "read", ann) == ann  # XADD hands the same id out again, for bob
    part.deliver("fresh")

    assert part.apply(apply_script, [ann]) == 1  # the stale replica applies "its" id
    assert part.score("bob") == 1 and part.score("ann") is None


def test_apply_older_delete_after_newer_delete_is_ignored(part: Partition, apply_script: FunctionCall) -> None:
    ids = [part.add("ann", kind) for kind in ("create", "delete", "create", "read", "delete", "create", "read")]
    part.deliver()
    first_delete, second_delete = ids[1], ids[4]

    assert part.apply(apply_script, [second_delete, ids[6]]) == 2
    assert part.apply(apply_script, [first_delete, ids[3]]) == 2
    assert part.client.hget(part.deleted, "ann") == second_delete
    assert part.score("ann") == 1


# ---------------------------------------------------------------- trim_acknowledged.lua


def _trim(
    part: Partition, script: FunctionCall, forget_consumers_after_ms: int = 600_000, retention_ms: int = 0
) -> int:
    trimmed, _ = script(
        keys=[part.events, part.deleted, part.deleted_at, part.recount, f"{part.events}:trimmed"],
        args=[GROUP, forget_consumers_after_ms, retention_ms],
        client=part.client,
    )
    return int(trimmed)


def _ids(part: Partition) -> list[str]:
    return [entry_id for entry_id, _ in part.client.xrange(part.events)]


def test_trim_keeps_pending_and_undelivered_entries(part: Partition, trim_script: FunctionCall) -> None:
    ids = [part.add("ann", "read", f"{ms}-0") for ms in range(1000, 11000, 1000)]
    assert part.deliver(count=6) == ids[:6]
    part.client.xack(part.events, GROUP, *ids[:3])

    assert _trim(part, trim_script) == 3
    assert _ids(part) == ids[3:]  # 4..6 pending, 7..10 never delivered
    assert _trim(part, trim_script) == 0


def test_trim_keeps_acknowledged_entries_within_the_retention_window(
    part: Partition, trim_script: FunctionCall
) -> None:
    now_ms = int(part.client.time()[0]) * 1000
    old = [part.add("ann", "update", f"{ms}-0") for ms in range(1000, 4000, 1000)]
    recent = [part.add("ann", "update", f"{now_ms - ago}-0") for ago in (30_000, 20_000, 10_000)]
    part.deliver()
    part.client.xack(part.events, GROUP, *old, *recent)

    # Everything is acknowledged, but subscribers may still resume from the last minute: only the old go.
    assert _trim(part, trim_script, retention_ms=60_000) == 3
    assert _ids(part) == recent
    # A window of 15 s: the two entries older than that go too (the last delivered one stays anyway).
    assert _trim(part, trim_script, retention_ms=15_000) == 2
    assert _ids(part) == recent[2:]


def test_trim_waits_for_the_slowest_group(part: Partition, trim_script: FunctionCall) -> None:
    ids = [part.add("ann", "read", f"{ms}-0") for ms in range(1000, 6000, 1000)]
    part.deliver()
    part.client.xack(part.events, GROUP, *ids)
    part.client.xgroup_create(part.events, "lagging", id=ids[1])  # has seen (and acknowledged) two entries

    # Everything is acknowledged by GROUP; "lagging" still needs the entries after its second.
    # The script keeps the last delivered entry itself (one extra), so only the first goes.
    assert _trim(part, trim_script) == 1
    assert _ids(part) == ids[1:]


def test_trim_with_nothing_pending_keeps_the_last_delivered(part: Partition, trim_script: FunctionCall) -> None:
    ids = [part.add("ann", "read", f"{ms}-0") for ms in range(1000, 6000, 1000)]
    assert part.deliver(count=3) == ids[:3]
    part.client.xack(part.events, GROUP, *ids[:3])
    assert _trim(part, trim_script) == 2
    assert _ids(part) == ids[2:]


def test_trim_forgets_only_tombstones_no_unapplied_event_can_predate(
    part: Partition, trim_script: FunctionCall
) -> None:
    ids = [part.add("ann", "read", f"{ms}-0") for ms in range(1000, 11000, 1000)]
    part.deliver(count=6)
    part.client.xack(part.events, GROUP, *ids[:3])  # the oldest pending entry is 4000-0
    part.client.hset(part.deleted, mapping={"old": "2000-0", "edge": "4000-0", "new": "8000-0"})
    part.client.zadd(part.deleted_at, {"old": 2000, "edge": 4000, "new": 8000})

    _trim(part, trim_script)
    assert part.client.hgetall(part.deleted) == {"edge": "4000-0", "new": "8000-0"}
    assert part.client.zrange(part.deleted_at, 0, -1) == ["edge", "new"]


def test_trim_drops_idle_consumers_with_nothing_pending(part: Partition, trim_script: FunctionCall) -> None:
    part.add("ann", "read")
    part.add("ann", "read")
    part.deliver("busy", count=1)
    part.client.xgroup_createconsumer(part.events, GROUP, "retired")
    time.sleep(0.01)  # both consumers idle for more than the 1 ms below

    _trim(part, trim_script, forget_consumers_after_ms=1)
    assert [consumer["name"] for consumer in part.client.xinfo_consumers(part.events, GROUP)] == ["busy"]


def test_trim_on_missing_stream_or_without_groups(redis_client: RedisCluster, trim_script: FunctionCall) -> None:
    tag = f"{{tunit-{uuid.uuid4().hex}}}"
    trim_keys = [f"events:{tag}", f"stats:deleted:{tag}", f"stats:deleted-at:{tag}", f"stats:recount:{tag}"]
    stream = trim_keys[0]
    try:
        assert trim_script(keys=trim_keys, args=[GROUP, 1000], client=redis_client) == [0, 0]
        redis_client.xadd(stream, {"user": "ann", "type": "read", "ts": "0"})
        assert trim_script(keys=trim_keys, args=[GROUP, 1000], client=redis_client) == [0, 0]
        assert redis_client.xlen(stream) == 1
    finally:
        redis_client.delete(stream)


# ---------------------------------------------------------------- top_readers.lua and the merge


def _pairs(flat: list[str]) -> list[tuple[str, int]]:
    return [(flat[i], int(float(flat[i + 1]))) for i in range(0, len(flat), 2)]


def test_top_readers_includes_the_tie_by_name(redis_client: RedisCluster, top_script: FunctionCall) -> None:
    key = f"stats:reads:{{tunit-{uuid.uuid4().hex}}}"
    try:
        redis_client.zadd(key, {"a": 5, "b": 5, "c": 5, "d": 5, "e": 9, "f": 1})
        got = _pairs(top_script(keys=[key], args=[3], client=redis_client))
        # ZREVRANGE alone would give e, d, c: the tie must bring a and b, which sort first by name.
        assert {"e", "a", "b"} <= {user for user, _ in got}
        assert dict(got) == {"e": 9, "d": 5, "c": 5, "a": 5, "b": 5}

        # Fewer members than asked for: all of them, once.
        assert _pairs(top_script(keys=[key], args=[10], client=redis_client)) == [
            ("e", 9),
            ("d", 5),
            ("c", 5),
            ("b", 5),
            ("a", 5),
            ("f", 1),
        ]
        assert top_script(keys=[f"stats:reads:{{tunit-{uuid.uuid4().hex}}}"], args=[3], client=redis_client) == []
    finally:
        redis_client.delete(key)


def test_top_profiles_merge_breaks_ties_by_name_across_partitions(
    fresh_system: System, fresh_client: RedisCluster
) -> None:
    """Statistics written straight into an otherwise empty system's top list index, each user in its partition's
    bucket: many equal scores everywhere."""
    scores: dict[str, int] = {}
    by_partition: dict[int, dict[str, int]] = {}
    for i in itertools.count():
        if i >= 160 and len(by_partition) == PARTITIONS:
            break
        # Names whose reverse order differs from their order, spread over every partition (160 names cover 16).
        user, score = f"u{i:03d}", 7 if i % 5 else 4
        scores[user] = score
        by_partition.setdefault(keys.partition_of(user, PARTITIONS), {})[user] = score
    for user, score in {"zz-top": 9, "zz-second": 8}.items():
        scores[user] = score
        by_partition[keys.partition_of(user, PARTITIONS)][user] = score
    for partition, members in by_partition.items():
        fresh_client.zadd(keys.top_key(keys.top_bucket_of(partition, PARTITIONS)), members)

    expected = sorted(scores.items(), key=lambda item: (-item[1], item[0]))

    async def in_process(limits: list[int]) -> list[list[tuple[str, int]]]:
        cluster = Cluster(fresh_system.client_settings("reporting_svc"))
        try:
            await cluster.verify_partitions()  # the layout's generation, as the service learns it at start
            reports = Reports(cluster, cluster.settings.partitions)
            return [await reports.top_profiles(limit) for limit in limits]
        finally:
            await cluster.close()

    limits = [1, 2, 3, 5, 17, 100, 162, 1000]
    for limit, got in zip(limits, asyncio.run(in_process(limits)), strict=True):
        assert got == expected[:limit], limit

    with grpc.insecure_channel(f"127.0.0.1:{fresh_system.reporting_port}") as channel:
        stub = reporting_pb2_grpc.ReportingServiceStub(channel)
        reply = stub.GetTopProfiles(reporting_pb2.GetTopProfilesRequest(limit=5), timeout=10)
    assert [(row.user, row.score) for row in reply.results] == expected[:5]
    assert expected[:5] == [("zz-top", 9), ("zz-second", 8), ("u001", 7), ("u002", 7), ("u003", 7)]


# ---------------------------------------------------------------- common.storage.keys


def test_partition_of_is_crc32_mod_n() -> None:
    # CRC-32's published check value: the standard polynomial, not some other hash.
    assert keys.partition_of("123456789", 1 << 32) == 0xCBF43926
    assert keys.partition_of("123456789", 16) == 0xCBF43926 % 16 == 6
    for user in ("ana", "zach", "roberto", "akua", "a.b@c+d-e_f", "ü-ser"):
        for n in (1, 2, 16, 1024):
            assert keys.partition_of(user, n) == zlib.crc32(user.encode("utf-8")) % n
    assert keys.partition_of("anything", 1) == 0
    # Spread: 1600 names land in every one of 16 partitions.
    assert {keys.partition_of(f"user{i}", 16) for i in range(1600)} == set(range(16))


def test_key_names_carry_the_partition_tag() -> None:
    assert keys.tag(0) == "{p00}" and keys.tag(7) == "{p07}" and keys.tag(15) == "{p15}" and keys.tag(123) == "{p123}"
    user = "ana"
    partition = keys.partition_of(user, 16)
    tag = keys.tag(partition)
    names = [
        keys.profile_key(user, 16),
        keys.events_key(partition),
        keys.reads_key(partition),
        keys.totals_key(partition),
        keys.deleted_key(partition),
        keys.deleted_at_key(partition),
    ]
    assert names == [
        f"profile:{tag}:ana",
        f"events:{tag}",
        f"stats:reads:{tag}",
        f"stats:totals:{tag}",
        f"stats:deleted:{tag}",
        f"stats:deleted-at:{tag}",
    ]
    # One slot per partition: a script may touch all of them at once.
    assert len({key_slot(name.encode()) for name in names}) == 1
    # Every user's profile shares its partition's slot.
    for other in ("x", "zach", "a.b@c"):
        assert key_slot(keys.profile_key(other, 16).encode()) == key_slot(
            keys.events_key(keys.partition_of(other, 16)).encode()
        )


def test_partitions_spread_over_slots() -> None:
    """Different partitions hash to different slots, so they can live on different shards."""
    assert len({key_slot(keys.events_key(p).encode()) for p in range(16)}) == 16


# ---------------------------------------------------------------- common.rpc.validation


@pytest.mark.parametrize("user", ["a", "A", "0", "ana", "a.b_c@d+e-f", "x" * 128, "9lives", "Zach.Smith@example.com"])
def test_valid_users(user: str) -> None:
    assert check_user(user) == user


@pytest.mark.parametrize(
    "user",
    ["", ".ana", "_ana", "-ana", "@ana", "+ana", "a" * 129, "an a", "ana\n", "ana/x", "{p01}", "ana:1", "anä", "a\x00"],
)
def test_invalid_users(user: str) -> None:
    with pytest.raises(InvalidArgument):
        check_user(user)


def test_invalid_user_message_is_short() -> None:
    with pytest.raises(InvalidArgument) as raised:
        check_user("!" * 10_000)
    assert len(str(raised.value)) < 300


def test_valid_fields() -> None:
    fields = {f"f{i}": "v" for i in range(MAX_FIELDS)}
    assert check_fields(fields) == fields
    assert check_fields({"a": "x" * MAX_VALUE_BYTES}) == {"a": "x" * MAX_VALUE_BYTES}
    assert check_fields({"e.mail_1-x": ""}) == {"e.mail_1-x": ""}
    assert check_fields({"n": "é" * (MAX_VALUE_BYTES // 2)})  # 2 bytes each: exactly the limit
    assert check_fields({"F" * 64: "v"})


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {f"f{i}": "v" for i in range(MAX_FIELDS + 1)},
        {"": "v"},
        {".a": "v"},
        {"a b": "v"},
        {"a@b": "v"},
        {"F" * 65: "v"},
        {"a": "x" * (MAX_VALUE_BYTES + 1)},
        {"a": "é" * (MAX_VALUE_BYTES // 2 + 1)},  # 4098 bytes in fewer characters
        {"a\n": "v"},
    ],
)
def test_invalid_fields(fields: dict[str, str]) -> None:
    with pytest.raises(InvalidArgument):
        check_fields(fields)
