"""The change feed's tail reader, without a cluster (profile_svc/events_feed.py `_follow`).

It reads a partition when it is woken (its wake channel, its subscription made, a quiet check), never two
reads of one partition at once (its batches go out in order), once more when woken during a read, and on at
once while pages come back full. The feed here is the real EventsFeed with its tail reads served from memory
(tests/unit/test_feed_overflow.py's InMemoryFeed) and its wake-ups called by the test.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

from common.storage import keys
from common.storage.cluster import Cluster
from profile_svc import events_feed
from profile_svc.events_feed import Anchor, Event, EventsFeed, Read
from tests.unit.test_feed_overflow import EVERYTHING, FakeCluster, InMemoryFeed, _clock, _next_events, _settings


class WakeCluster:
    """A script handle, and wake-up subscriptions that wake nothing by themselves: the test calls `woken`."""

    def __init__(self) -> None:
        self.woken: Callable[[str], None] | None = None
        self.generation = 0  # the layout's, as verify_partitions reads it

    def script(self, path: Any, repeatable: bool = False) -> object:
        return path

    run = FakeCluster.run  # recording the tail's states fails: no cluster
    watch_wakes = Cluster.watch_wakes  # the real mapping of partitions to channels, over the fake subscription

    async def watch_channels(self, channels: Sequence[str], woken: Callable[[str], None]) -> None:
        self.woken = woken
        await asyncio.Event().wait()


class FollowedFeed(InMemoryFeed):
    """The in-memory feed with the real tail reader; its tail reads can be held, and are counted."""

    _follow = EventsFeed._follow

    def __init__(self) -> None:
        super().__init__(_settings(stream_quiet_check_s=3600))
        self.cluster = WakeCluster()  # type: ignore[assignment]
        self.quiet_check_s = 3600
        self.tail_reads: list[int] = []  # partitions, in the order their tail reads started
        self.in_flight: set[int] = set()
        self.hold = asyncio.Event()
        self.hold.set()

    async def _read(
        self,
        partition: int,
        after: Anchor,
        until: Any,
        count: int,
        wanted: Callable[[Event], bool] | None = None,
        tail: bool = False,
    ) -> Read:
        if not tail:
            return await super()._read(partition, after, until, count, wanted)
        assert partition not in self.in_flight, "two tail reads of one partition at once"
        self.in_flight.add(partition)
        self.tail_reads.append(partition)
        try:
            read = await super()._read(partition, after, until, count, wanted)
            await self.hold.wait()  # held after reading: what is appended meanwhile is for the next read
            return read
        finally:
            self.in_flight.discard(partition)

    def wake(self, partition: int) -> None:
        assert self.cluster.woken is not None, "the feed subscribed to the wake channels"  # type: ignore[attr-defined]
        self.cluster.woken(keys.wake_key(partition))  # type: ignore[attr-defined]


async def _settled() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


def _run(scenario: Callable[[FollowedFeed], Any]) -> None:
    async def main() -> None:
        feed = FollowedFeed()
        try:
            await asyncio.wait_for(scenario(feed), 5)
        finally:
            for task in feed._tailers:
                task.cancel()

    asyncio.run(main())


def test_a_woken_partition_is_read_and_one_woken_during_its_read_is_read_again() -> None:
    async def scenario(feed: FollowedFeed) -> None:
        watch = feed.watch(_clock(feed.settings), None, EVERYTHING)
        await anext(watch)
        await _settled()
        assert feed.tail_reads == [], "nothing read before a wake-up"
        feed.hold.clear()
        first = feed.append(1, ["create"])
        feed.wake(1)
        await _settled()
        assert feed.tail_reads == [1]
        second = feed.append(1, ["update", "delete"])  # after the read held above
        feed.wake(1)
        feed.wake(1)
        await _settled()
        assert feed.tail_reads == [1], "no second read of the partition while one is out"
        feed.hold.set()
        got = await _next_events(watch, 3)
        assert [event for event, _ in got] == first + second
        await _settled()
        assert feed.tail_reads == [1, 1], "one more read for the wake-ups during the first"
        await watch.aclose()

    _run(scenario)


def test_full_pages_are_read_on_without_a_wake_up() -> None:
    async def scenario(feed: FollowedFeed) -> None:
        watch = feed.watch(_clock(feed.settings), None, EVERYTHING)
        await anext(watch)
        await _settled()
        written = feed.append(0, ["create"] * (events_feed.PAGE + 5))
        feed.wake(0)
        got = await _next_events(watch, len(written))
        assert [event for event, _ in got] == written
        await _settled()
        assert feed.tail_reads == [0, 0], "a full page, then the rest"
        await watch.aclose()

    _run(scenario)


def test_a_quiet_check_reads_every_partition() -> None:
    async def scenario(feed: FollowedFeed) -> None:
        feed.quiet_check_s = 0.01
        watch = feed.watch(_clock(feed.settings), None, EVERYTHING)
        await anext(watch)
        written = feed.append(1, ["create"])  # no wake-up: a lost one
        got = await _next_events(watch, 1)
        assert [event for event, _ in got] == written
        assert set(feed.tail_reads) == set(range(feed.partitions))
        await watch.aclose()

    _run(scenario)
