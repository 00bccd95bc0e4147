"""The aggregator's loops against an in-memory cluster (aggregator_svc/aggregator.py), without a cluster.

What is checked here is the control flow: the consume loop takes the stream in batches and waits when idle,
applies first what was delivered to it and never applied, waits out a failing cluster and takes again,
makes the group again when the stream was deleted, lets an unexpected failure end the process, and every loop
stops on shutdown; the reclaim loop takes over what a dead consumer left pending. What the scripts do inside
the cluster (exact counts, trimming) is the aggregation model's and the suite's to check, against a real node.

FakeCluster holds one consumer group per stream and offers only what the loops call of common/storage's
Cluster, raising its storage-neutral errors (common/errors.py) as the storage layer does.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import pytest

from aggregator_svc import aggregator, share
from aggregator_svc.aggregator import Aggregator
from common.errors import ClusterUnavailable, CommandFailed, NoGroup
from common.runtime.config import Settings
from common.storage import keys
from common.storage.cluster import Cluster

CONSUMER = "replica-a"
GROUP = "aggregator"


@dataclasses.dataclass
class Pending:
    consumer: str
    delivered_ms: float


@dataclasses.dataclass
class Stream:
    """One partition's stream and its consumer group, as far as the loops see them."""

    ids: list[int] = dataclasses.field(default_factory=list)  # entry n has the id `n-0`
    group: bool = False
    last_delivered: int = 0
    pending: dict[int, Pending] = dataclasses.field(default_factory=dict)
    counted: list[int] = dataclasses.field(default_factory=list)  # entries applied, in the order applied


def _id(n: int) -> bytes:
    return f"{n}-0".encode()


def _n(raw: bytes | str) -> int:
    text = raw.decode() if isinstance(raw, bytes) else raw
    return int(text.partition("-")[0])


def _now_ms() -> float:
    return time.monotonic() * 1000


class FakeCluster:
    """The cluster as the aggregator uses it: settings, script handles and runs, the group's commands
    (reading its own pending entries, claiming idle ones) and the wake-up subscription.

    `faults[operation]` lists exceptions the next calls of that operation raise before doing anything."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.streams = {keys.events_key(p): Stream() for p in range(settings.partitions)}
        self.faults: dict[str, list[BaseException]] = {}
        self.calls: list[tuple[str, Any]] = []  # (operation, what it was given or did), in order
        self.armed: set[str] = set()  # wake flags set by a take that found nothing
        self.woken: Callable[[str], None] | None = None  # the subscriber of the wake channels
        self.scripts: dict[str, bool] = {}  # script -> declared repeatable
        self.generation = 0  # the layout's, as verify_partitions reads it

    async def layout_checked(self) -> None:
        """Checked already: the services' start does that before the aggregator's loops run."""

    # What the test does.

    def append(self, partition: int, count: int) -> None:
        stream = self.streams[keys.events_key(partition)]
        start = stream.ids[-1] if stream.ids else 0
        stream.ids += range(start + 1, start + 1 + count)
        wake = keys.wake_key(partition)
        if wake in self.armed and self.woken is not None:  # helpers.lua: the event's script publishes once
            self.armed.discard(wake)
            self.woken(wake)

    def deliver(self, partition: int, count: int, consumer: str, ago_ms: float = 0) -> list[int]:
        """Entries delivered to a consumer that never applied them (it crashed, or read them apart)."""
        stream = self.streams[keys.events_key(partition)]
        taken = [n for n in stream.ids if n > stream.last_delivered][:count]
        for n in taken:
            stream.pending[n] = Pending(consumer, _now_ms() - ago_ms)
        stream.last_delivered = taken[-1]
        return taken

    def delete(self, partition: int) -> None:
        """The stream and its group deleted (a flushed cluster)."""
        self.streams[keys.events_key(partition)] = Stream()

    def ops(self, name: str) -> list[Any]:
        return [given for operation, given in self.calls if operation == name]

    # What the aggregator calls.

    def script(self, path: Any, repeatable: bool = False) -> str:
        self.scripts[path.name] = repeatable
        return str(path.name)

    async def _enter(self, operation: str, given: Any) -> None:
        """Record a call; yield to the event loop as a round trip would (a loop that never waits still lets
        the test run, and fail); then raise the fault planned for it, if any."""
        self.calls.append((operation, given))
        await asyncio.sleep(0)
        if self.faults.get(operation):
            raise self.faults[operation].pop(0)

    def _group(self, stream_key: str) -> Stream:
        stream = self.streams[stream_key]
        if not stream.group:
            raise NoGroup("NOGROUP No such key or consumer group", code="NOGROUP")
        return stream

    async def create_group(self, stream_key: str, group: str) -> bool:
        """The group from the stream's first entry (and the stream if need be); False if it was there."""
        await self._enter("group", group)
        stream = self.streams[stream_key]
        made, stream.group = not stream.group, True
        return made

    async def read_own_pending(self, stream_key: str, group: str, consumer: str, count: int) -> list[Any]:
        await self._enter("own pending", consumer)
        stream = self._group(stream_key)
        mine = sorted(n for n, p in stream.pending.items() if p.consumer == consumer)[:count]
        return [(_id(n), {b"user": b"u"}) for n in mine]

    watch_wakes = Cluster.watch_wakes  # the real mapping of partitions to channels, over the fake subscription

    async def watch_channels(self, channels: list[str], woken: Callable[[str], None]) -> None:
        """Sharded pub/sub: every channel counts as woken once subscribed, then each message wakes its own."""
        await self._enter("subscribe", len(channels))
        self.woken = woken
        for channel in channels:
            woken(channel)
        await asyncio.Event().wait()  # subscribed until cancelled

    async def claim_idle(
        self, stream_key: str, group: str, consumer: str, min_idle_ms: int, start: Any, count: int
    ) -> tuple[Any, list[Any]]:
        await self._enter("claim", start)
        stream = self._group(stream_key)
        now = _now_ms()
        due = sorted(n for n, p in stream.pending.items() if n >= _n(start) and now - p.delivered_ms >= min_idle_ms)
        claimed, rest = due[:count], due[count:]
        for n in claimed:
            stream.pending[n] = Pending(consumer, now)
        return _id(rest[0]) if rest else b"0-0", [(_id(n), {b"user": b"u"}) for n in claimed]

    async def run(
        self,
        script: str,
        script_keys: list[str],
        args: list[Any],
        confirm: Any = None,
        bounded: bool = True,
        together: bool = False,
    ) -> Any:
        if script == "heartbeat.lua":  # this replica alone is live
            await self._enter("heartbeat", args[0])
            return [args[0].encode()]
        if script == "apply_events.lua" and args[1] == ">":
            assert not bounded, "the take runs on the partition's reserved connection"
            assert together, "the partitions' takes of a tick share one pipeline per primary"
            return await self._take(script_keys, *args)
        if script == "apply_events.lua":
            return await self._apply(script_keys, args)
        await self._enter(script, args)
        if script == "recount_step.lua":
            return [0, 0, 0]  # nothing (more) to do, and no users noted for the top list's index
        return [0, 0]  # a trim with nothing (more) to do

    async def _take(self, script_keys: list[str], group: str, start: str, consumer: str, count: int) -> Any:
        """apply_events.lua with ">": the group's next entries for `consumer`, applied and acknowledged."""
        assert group == GROUP
        await self._enter("take", count)
        stream = self._group(script_keys[0])
        taken = [n for n in stream.ids if n > stream.last_delivered][:count]
        if taken:
            stream.last_delivered = taken[-1]
        stream.counted += taken  # applied and acknowledged in the same script: never pending
        if not taken:
            self.armed.add(script_keys[7])
        return [len(taken), 0, len(taken), _id(stream.last_delivered), [], 0, 0]

    async def _apply(self, script_keys: list[str], args: list[Any]) -> Any:
        """apply_events.lua with ids: those of them still pending, applied and acknowledged."""
        await self._enter("apply", [_n(i) for i in args[1:]])
        stream = self._group(script_keys[0])
        applied = 0
        for n in map(_n, args[1:]):
            if stream.pending.pop(n, None) is not None:
                stream.counted.append(n)
                applied += 1
        return [applied, 0, [], 0, 0]


def _settings(**changes: Any) -> Settings:
    base = {
        "partitions": 1,
        "aggregator_group": GROUP,
        "aggregator_consumer": CONSUMER,
        "aggregator_batch": 100,
        "aggregator_linger_ms": 0,
        "aggregator_claim_idle_ms": 60_000,
        "aggregator_maintenance_s": 1,
    }
    return dataclasses.replace(Settings(), **{**base, **changes})


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """A failing cluster is waited out for RETRY_S; a few milliseconds here."""
    monkeypatch.setattr(aggregator, "RETRY_S", 0.005)


def _run(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    async def main() -> None:
        await asyncio.wait_for(scenario(), 10)  # a hang fails the test rather than the run

    asyncio.run(main())


async def _until(condition: Callable[[], bool], loop: asyncio.Task[None] | None = None) -> None:
    """Wait until the condition holds; fail at once if the loop under test ended meanwhile."""
    while not condition():
        if loop is not None and loop.done():
            raise AssertionError(f"the loop ended: {loop.exception()!r}")
        await asyncio.sleep(0.001)


@contextlib.asynccontextmanager
async def _consuming(agg: Aggregator, partition: int = 0) -> AsyncIterator[asyncio.Task[None]]:
    """The consume loop of one partition and the wake-up subscriptions, running while the block runs, then
    cancelled."""
    wakes = asyncio.create_task(agg._watch_wakes())
    task = asyncio.create_task(agg._consume(partition))
    try:
        yield task
    finally:
        for running in (task, wakes):
            running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running


def _setup(**changes: Any) -> tuple[FakeCluster, Aggregator]:
    cluster = FakeCluster(_settings(**changes))
    return cluster, Aggregator(cluster, cluster.settings.aggregation())  # type: ignore[arg-type]


def test_the_stream_is_taken_in_batches_and_an_idle_partition_waits_for_news() -> None:
    async def scenario() -> None:
        cluster, agg = _setup()
        cluster.append(0, 250)
        stream = cluster.streams[keys.events_key(0)]
        async with _consuming(agg) as task:
            await _until(lambda: len(stream.counted) == 250, task)
            await _until(lambda: keys.wake_key(0) in cluster.armed, task)
            # The group made from the first entry, its own pending looked at first, then batches of at most 100.
            assert [call for call in cluster.calls if call[0] != "subscribe"][:2] == [
                ("group", GROUP),
                ("own pending", CONSUMER),
            ]
            assert set(cluster.ops("take")) == {100}
            # Idle: a take found nothing and armed the wake flag; no more takes until an event wakes it.
            takes = len(cluster.ops("take"))
            await asyncio.sleep(0.05)
            assert len(cluster.ops("take")) == takes
            cluster.append(0, 7)
            await _until(lambda: len(stream.counted) == 257, task)
        assert stream.counted == list(range(1, 258)), "each entry applied once, in order"
        assert not stream.pending
        # Each of its scripts is safe to run again, so a connection lost under one is retried, not unknown.
        assert cluster.scripts == {
            "apply_events.lua": True,
            "trim_acknowledged.lua": True,
            "recount_step.lua": True,
            "heartbeat.lua": True,
            "index_top.lua": True,
            "clear_outbox.lua": True,
            "reindex_partition.lua": True,
            "note_users.lua": True,
            "outbox_notes.lua": True,
        }

    _run(scenario)


def test_entries_delivered_to_it_but_never_applied_are_applied_first() -> None:
    async def scenario() -> None:
        cluster, agg = _setup()
        cluster.streams[keys.events_key(0)].group = True  # made by an earlier run
        cluster.append(0, 10)
        left = cluster.deliver(0, 4, CONSUMER)  # an earlier run of this consumer read them, then died
        stream = cluster.streams[keys.events_key(0)]
        async with _consuming(agg) as task:
            await _until(lambda: len(stream.counted) == 10, task)
        assert cluster.ops("apply")[0] == left
        assert stream.counted == list(range(1, 11))
        assert not stream.pending

    _run(scenario)


@pytest.mark.parametrize(
    "failure",
    [ClusterUnavailable("connection lost"), CommandFailed("BUSY a script runs", code="BUSY")],
    ids=["unavailable", "error-reply"],
)
def test_a_failed_take_is_waited_out_and_taken_again(failure: Exception) -> None:
    async def scenario() -> None:
        cluster, agg = _setup(aggregator_batch=10)
        cluster.append(0, 25)
        cluster.faults["take"] = [failure, failure]
        stream = cluster.streams[keys.events_key(0)]
        async with _consuming(agg) as task:
            await _until(lambda: len(stream.counted) == 25, task)
            assert not task.done(), "a failing cluster does not end the loop"
        assert stream.counted == list(range(1, 26))
        # After each failure it looks at its own pending entries again before taking more.
        operations = [operation for operation, _ in cluster.calls if operation in ("take", "own pending")]
        assert operations[:5] == ["own pending", "take", "own pending", "take", "own pending"]

    _run(scenario)


def test_a_failed_apply_of_its_own_pending_entries_is_retried() -> None:
    async def scenario() -> None:
        cluster, agg = _setup()
        cluster.append(0, 6)
        left = cluster.deliver(0, 6, CONSUMER)
        cluster.faults["apply"] = [ClusterUnavailable("connection lost")]
        stream = cluster.streams[keys.events_key(0)]
        async with _consuming(agg) as task:
            await _until(lambda: len(stream.counted) == 6, task)
        assert cluster.ops("apply")[:2] == [left, left]
        assert not stream.pending

    _run(scenario)


def test_a_deleted_stream_gets_its_group_again() -> None:
    async def scenario() -> None:
        cluster, agg = _setup()
        cluster.append(0, 3)
        async with _consuming(agg) as task:
            await _until(lambda: len(cluster.streams[keys.events_key(0)].counted) == 3, task)
            cluster.delete(0)  # NOGROUP from the next take
            cluster.append(0, 5)
            await _until(lambda: len(cluster.streams[keys.events_key(0)].counted) == 5, task)
        assert cluster.ops("group") == [GROUP, GROUP]
        assert cluster.streams[keys.events_key(0)].counted == [1, 2, 3, 4, 5]

    _run(scenario)


def test_an_unexpected_failure_ends_every_loop() -> None:
    async def scenario() -> None:
        cluster, agg = _setup(partitions=2)
        before = asyncio.all_tasks()
        cluster.faults["take"] = [RuntimeError("a bug")]
        with pytest.raises(ExceptionGroup) as ended:
            await agg.run()
        assert [type(error) for error in ended.value.exceptions] == [RuntimeError]
        assert asyncio.all_tasks() == before, "no loop runs on"

    _run(scenario)


def test_entries_a_dead_consumer_left_pending_are_claimed_and_applied() -> None:
    async def scenario() -> None:
        cluster, agg = _setup(aggregator_claim_idle_ms=40, aggregator_batch=3)
        cluster.append(0, 12)
        dead = cluster.deliver(0, 7, "replica-dead", ago_ms=60_000)
        # Pending with a consumer that is alive: idle for less than claim_idle_ms as long as the test runs.
        live = cluster.deliver(0, 2, "replica-live", ago_ms=-3_600_000)
        stream = cluster.streams[keys.events_key(0)]
        run = asyncio.create_task(agg.run())
        await _until(lambda: set(dead) <= set(stream.counted), run)
        assert not set(live) & set(stream.counted)
        assert all(stream.pending[n].consumer == "replica-live" for n in live)
        # Claimed in pages of at most a batch, each page applied by id.
        assert all(len(page) <= 3 for page in cluster.ops("apply"))
        # The rest of the stream is taken as usual; the live replica's entries wait for it (or a claim).
        await _until(lambda: set(stream.counted) == set(range(1, 13)) - set(live), run)
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run

    _run(scenario)


def test_one_reclaim_takes_over_every_page_of_abandoned_entries() -> None:
    async def scenario() -> None:
        cluster, agg = _setup(aggregator_claim_idle_ms=40, aggregator_batch=3)
        cluster.streams[keys.events_key(0)].group = True
        cluster.append(0, 8)
        dead = cluster.deliver(0, 8, "replica-dead", ago_ms=60_000)
        await agg._reclaim(0)
        assert cluster.ops("claim") == ["0-0", b"4-0", b"7-0"], "it follows the cursor to the end"
        assert cluster.ops("apply") == [dead[:3], dead[3:6], dead[6:]]
        assert cluster.streams[keys.events_key(0)].counted == dead

    _run(scenario)


def test_shutdown_stops_every_loop() -> None:
    async def scenario() -> None:
        cluster, agg = _setup(partitions=3)
        before = asyncio.all_tasks()
        run = asyncio.create_task(agg.run())
        await _until(lambda: len(cluster.armed) == 3, run)  # every partition idle, waiting for its wake-up
        run.cancel()  # what SIGTERM does (aggregator_svc/__main__.py)
        with pytest.raises(asyncio.CancelledError):
            await run
        assert asyncio.all_tasks() == before, "no loop runs on"

    _run(scenario)


def test_quiet_partitions_are_looked_after_a_slice_at_a_time_and_busy_ones_every_interval() -> None:
    """At 4,096 partitions, a 5 s maintenance interval and a 60 s quiet check: a partition with recent events is
    looked after every instant; each quiet one once in ten quiet checks, with the rest of its twelfth of the
    partitions; and its idle take comes due every quiet check, on an instant of its slice (so that the
    slice's scripts share pipelines)."""
    _, agg = _setup(partitions=4096, aggregator_maintenance_s=5, aggregator_quiet_check_s=60)
    start = 1_000_000 * 60.0  # an instant at which a round of quiet checks begins
    agg._active_until[7] = start + 3600
    seen: list[int] = []
    for tick in range(12 * aggregator.QUIET_LOOK_AFTER_EVERY):
        active, quiet = agg._due(start + tick * 5)
        assert active == [7]
        seen += quiet
        assert len(quiet) in ((340, 341, 342) if tick < 12 else (0,)), tick
    assert sorted(seen) == [p for p in range(4096) if p != 7], "each quiet partition once in ten minutes"
    for partition in (0, 5, 11, 4095):
        wait = agg._until_quiet_check(partition)
        assert 0 < wait <= 60
        assert round((time.monotonic() + wait) / 5) % 12 == partition % 12, "on an instant of its slice"


def test_the_partitions_are_shared_among_the_live_replicas_and_stay_put_as_others_come_and_go() -> None:
    """Rendezvous hashing: two replicas split 4,096 partitions about evenly; a third takes about a third, each
    from both others, and no partition moves between the first two; when it goes, its partitions go back."""
    partitions = range(4096)
    two = {p: share.owner(p, ["a", "b"]) for p in partitions}
    assert 1900 < sum(o == "a" for o in two.values()) < 2200
    three = {p: share.owner(p, ["a", "b", "c"]) for p in partitions}
    moved = [p for p in partitions if three[p] != two[p]]
    assert all(three[p] == "c" for p in moved), "only to the newcomer"
    assert 1250 < len(moved) < 1450
    assert {p: share.owner(p, ["b", "a"]) for p in partitions} == two, "the order the cluster lists them in"


def test_a_replica_consumes_only_its_share() -> None:
    async def scenario() -> None:
        cluster, agg = _setup(partitions=2)
        agg.share.update(["replica-a", "replica-b"])
        mine = {p for p in range(2) if share.owner(p, ["replica-a", "replica-b"]) == CONSUMER}
        assert agg.share.owned == mine
        for p in range(2):
            cluster.append(p, 3)
        tasks = [asyncio.create_task(agg._consume(p)) for p in range(2)]
        wakes = asyncio.create_task(agg._watch_wakes())
        try:
            await _until(lambda: all(len(cluster.streams[keys.events_key(p)].counted) == 3 for p in mine))
            await asyncio.sleep(0.05)
            for p in set(range(2)) - mine:
                assert cluster.streams[keys.events_key(p)].counted == [], "another replica's partition"
            agg.share.update(["replica-a"])  # the other replica's word ran out: its partitions are taken over at once
            await _until(lambda: all(len(cluster.streams[keys.events_key(p)].counted) == 3 for p in range(2)))
        finally:
            for task in [*tasks, wakes]:
                task.cancel()
            await asyncio.gather(*tasks, wakes, return_exceptions=True)

    _run(scenario)


def test_a_partition_whose_maintenance_hangs_does_not_hold_back_the_others() -> None:
    """A partition on a shard that is down waits out its timeouts; the other partitions are looked after every
    instant meanwhile, and the hung one is not looked after twice at once."""

    async def scenario() -> None:
        _, agg = _setup(partitions=2, aggregator_maintenance_s=1)
        for partition in (0, 1):
            agg._active_until[partition] = time.monotonic() + 3600
        looked_after: list[int] = []
        stalled = asyncio.Event()

        async def look_after(partition: int) -> None:
            looked_after.append(partition)
            if partition == 0:
                await stalled.wait()

        agg._look_after = look_after  # type: ignore[method-assign]
        loop = asyncio.create_task(agg._maintenance())
        await _until(lambda: looked_after.count(1) >= 3, loop)
        assert looked_after.count(0) == 1, "the hung partition's look-after is not started again"
        stalled.set()
        await _until(lambda: looked_after.count(0) == 2, loop)
        loop.cancel()
        with pytest.raises(asyncio.CancelledError):
            await loop

    _run(scenario)


def test_a_partition_whose_calls_fail_backs_off_and_sits_maintenance_out_until_they_work(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A shard that is down is a third of 4,096 partitions failing at once: each waits twice as long after each
    failure in a row (up to MAX_RETRY_S), and its look-after, which would fail too, is not due meanwhile; once a
    call works it is due again, and its next failure waits the first retry's time again."""

    monkeypatch.setattr(aggregator, "RETRY_S", 0.04)

    async def scenario() -> None:
        cluster, agg = _setup(aggregator_batch=10)
        agg._active_until[0] = time.monotonic() + 3600
        cluster.append(0, 5)
        down = ClusterUnavailable("connection refused")
        cluster.faults["own pending"] = [down] * 4
        stream = cluster.streams[keys.events_key(0)]
        attempts: list[float] = []
        seen_due: list[bool] = []
        real_enter = cluster._enter

        async def enter(operation: str, given: Any) -> None:
            if operation == "own pending":
                attempts.append(time.monotonic())
                seen_due.append(0 in agg._due(time.monotonic())[0])
            await real_enter(operation, given)

        cluster._enter = enter  # type: ignore[method-assign]
        async with _consuming(agg) as task:
            await _until(lambda: len(stream.counted) == 5, task)
        gaps = [later - earlier for earlier, later in itertools.pairwise(attempts[:5])]
        assert all(gap >= 0.9 * 0.04 * 2**i for i, gap in enumerate(gaps)), f"each wait twice the last: {gaps}"
        assert seen_due[:5] == [True, False, False, False, False], "left out of maintenance while failing"
        assert 0 in agg._due(time.monotonic())[0], "due again once its calls work"
        assert agg._failures[0] == 0

    _run(scenario)


def test_a_quiet_partition_whose_calls_work_again_is_looked_after_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """A quiet partition left out of maintenance while its calls failed is due at the next instants once they
    work, not at its next round of quiet checks: its entries are trimmed and its dead consumers' reclaimed."""
    monkeypatch.setattr(aggregator, "RETRY_S", 0.01)

    async def scenario() -> None:
        cluster, agg = _setup(aggregator_batch=10)
        cluster.faults["own pending"] = [ClusterUnavailable("connection refused")] * 2
        assert 0 not in agg._due(time.monotonic())[0], "quiet: not due at every instant"
        async with _consuming(agg) as task:
            await _until(lambda: keys.wake_key(0) in cluster.armed, task)  # it works again: a take armed it
        assert agg._failures[0] == 0
        assert 0 in agg._due(time.monotonic())[0], "due at the next instant once its calls work"

    _run(scenario)


def test_quiet_look_afters_go_a_few_at_a_time_and_a_busy_partition_never_waits_behind_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A round of quiet checks at 4,096 partitions is thousands of look-afters: QUIET_LOOKING run at once, the
    rest queued, while a partition with recent events is looked after at every instant."""
    monkeypatch.setattr(aggregator, "QUIET_LOOK_AFTER_EVERY", 1)  # every instant a round of quiet checks

    async def scenario() -> None:
        _, agg = _setup(partitions=256, aggregator_maintenance_s=1, aggregator_quiet_check_s=1)
        agg._active_until[5] = time.monotonic() + 3600
        release = asyncio.Event()
        started: list[int] = []
        most_at_once = 0
        running: set[int] = set()

        async def look_after(partition: int) -> None:
            nonlocal most_at_once
            started.append(partition)
            if partition != 5:
                running.add(partition)
                most_at_once = max(most_at_once, len(running))
                await release.wait()
                running.discard(partition)

        agg._look_after = look_after  # type: ignore[method-assign]
        loop = asyncio.create_task(agg._maintenance())
        await _until(lambda: bool(running), loop)
        busy = started.count(5)
        await _until(lambda: started.count(5) >= busy + 2, loop)  # two more instants, the quiet ones hanging
        assert most_at_once == aggregator.QUIET_LOOKING
        release.set()
        await _until(lambda: len(set(started)) == 256, loop)  # the queue drains: every quiet partition too
        loop.cancel()
        with pytest.raises(asyncio.CancelledError):
            await loop

    _run(scenario)


def test_maintenance_stopped_with_quiet_look_afters_queued_leaves_none_running(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Shutdown cancels the look-afters running; each that ends must not start one of those still queued."""
    monkeypatch.setattr(aggregator, "QUIET_LOOK_AFTER_EVERY", 1)

    async def scenario() -> None:
        _, agg = _setup(partitions=64, aggregator_maintenance_s=1, aggregator_quiet_check_s=1)
        hanging = asyncio.Event()

        async def look_after(partition: int) -> None:
            await hanging.wait()

        agg._look_after = look_after  # type: ignore[method-assign]
        before = asyncio.all_tasks()
        loop = asyncio.create_task(agg._maintenance())
        await asyncio.sleep(1.2)  # an instant: QUIET_LOOKING hang, the rest queued
        loop.cancel()
        with pytest.raises(asyncio.CancelledError):
            await loop
        await asyncio.sleep(0)
        assert asyncio.all_tasks() == before, "a cancelled look-after started a queued one"

    _run(scenario)
