"""A change-feed subscriber whose queue overflows, without a cluster (profile_svc/events_feed.py).

A subscriber's queue is bounded in the events it wants; beyond that the queue is dropped and the subscriber
reads from the stream itself until it is level again (docs/architecture.md, "The change feed: no silent
gap"), so it still gets every event, in order, once. The feed here is the real EventsFeed with its stream
reads served from memory: `_read` answers as events_after.lua does for a position the stream still holds,
and the test plays the tail reader, handing out each batch as `_follow` does.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncGenerator, Callable
from typing import Any

import pytest

from common.errors import ClusterUnavailable, StreamEnded
from common.rpc.streams import StreamClock, StreamLimits
from common.runtime.config import Settings
from profile_svc.events_feed import (
    MAX_QUEUED_BATCHES,
    Anchor,
    Batch,
    Event,
    EventFilter,
    EventsFeed,
    Position,
    Read,
    Subscription,
    Tokens,
)
from profile_svc.feed_checkpoints import BEFORE_FIRST

QUEUE = 5
PARTITIONS = 2
EVERYTHING = EventFilter(frozenset({"create", "update", "delete"}), frozenset())
CREATES = EventFilter(frozenset({"create"}), frozenset())


class FakeCluster:
    """What EventsFeed asks of its cluster besides its reads: a script handle, wake-ups (none come), and
    recording its tail states, which always fails here (its tokens carry every partition)."""

    def script(self, path: Any, repeatable: bool = False) -> object:
        return path

    async def run(self, *args: Any, **kwargs: Any) -> Any:
        raise ClusterUnavailable("no cluster in unit tests")

    async def watch_wakes(self, partitions: Any, woken: Any) -> None:
        await asyncio.Event().wait()


class InMemoryFeed(EventsFeed):
    """The feed over in-memory streams: its reads of a stream (the one seam to the cluster) come from lists."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(FakeCluster(), settings.partitions, settings.stream_queue)  # type: ignore[arg-type]
        self.settings = settings
        self.streams: list[list[Event]] = [[] for _ in range(self.partitions)]
        self.reads = 0  # reads of a stream made by subscribers (the tail reader's are the test's own)
        self._tokens = Tokens(b"secret of the test deployment", self.partitions)
        self._clock_ms = 1_700_000_000_000

    async def _read(
        self,
        partition: int,
        after: Anchor,
        until: Any,
        count: int,
        wanted: Callable[[Event], bool] | None = None,
    ) -> Read:
        """events_after.lua for a position the stream holds: the entries after it up to `until`, at most
        `count` scanned; with an EventFilter only the wanted ones, and where the scan ended."""
        self.reads += 1
        stream = self.streams[partition]
        assert after == BEFORE_FIRST or after in [event.anchor for event in stream], "a position never issued"
        later = [e for e in stream if e.id > after.id and (until == "+" or e.id <= until)][:count]
        last = stream[-1].anchor if stream else BEFORE_FIRST
        scanned_to = later[-1].anchor if later else None
        events = [e for e in later if wanted(e)] if isinstance(wanted, EventFilter) else later
        return Read("ok", events, len(later), scanned_to, last)

    async def _last(self, partition: int) -> Anchor:
        stream = self.streams[partition]
        return stream[-1].anchor if stream else BEFORE_FIRST

    async def _follow(self) -> None:
        """The test hands out the batches itself (publish)."""
        await asyncio.Event().wait()

    def append(self, partition: int, types: list[str]) -> list[Event]:
        """Write entries to a partition's stream, as the services' scripts do."""
        stream = self.streams[partition]
        events = []
        for kind in types:
            self._clock_ms += 1
            n = stream[-1].n + 1 if stream else 1
            events.append(Event((self._clock_ms, 0), n, partition, f"user{n}", kind, self._clock_ms))
            stream.append(events[-1])
        return events

    def publish(self, partition: int, types: list[str]) -> list[Event]:
        """Write entries and hand them out as the tail reader does: a batch from where it stood."""
        events = self.append(partition, types)
        base = self.tail[partition]
        self.tail[partition] = events[-1].anchor
        self._hand_out(Batch(partition, base, events, self.tail[partition]))
        return events


def _settings(**changes: Any) -> Settings:
    return dataclasses.replace(Settings(), partitions=PARTITIONS, stream_queue=QUEUE, **changes)


def _clock(settings: Settings) -> StreamClock:
    return StreamClock(StreamLimits(settings.streams()))


def _run(scenario: Callable[[InMemoryFeed], Any]) -> None:
    async def main() -> None:
        feed = InMemoryFeed(_settings())
        try:
            await asyncio.wait_for(scenario(feed), 5)  # a hang fails the test rather than the run
        finally:
            for task in feed._tailers:
                task.cancel()

    asyncio.run(main())


async def _next_events(
    watch: AsyncGenerator[tuple[Event | None, Position]], count: int
) -> list[tuple[Event, list[Anchor]]]:
    """The next `count` events of a watch (heartbeats skipped), each with the position sent with it."""
    got: list[tuple[Event, list[Anchor]]] = []
    while len(got) < count:
        event, position = await anext(watch)
        if event is not None:
            got.append((event, list(position.anchors)))
    return got


# The queue itself.


def _batch(events: list[Event]) -> Batch:
    return Batch(0, None, events, events[-1].anchor if events else BEFORE_FIRST)


def _events(types: list[str]) -> list[Event]:
    return [Event((i + 1, 0), i + 1, 0, "u", kind, i + 1) for i, kind in enumerate(types)]


def test_a_queue_holds_batches_up_to_its_limit_of_wanted_events_then_overflows() -> None:
    clock = _clock(_settings())
    subscription = Subscription(QUEUE, clock, EVERYTHING)
    first, second = _batch(_events(["create"] * 3)), _batch(_events(["update"] * 2))
    subscription.push(first)
    subscription.push(second)
    assert (subscription.queued, subscription.overflowed) == (5, False)
    assert clock.wake.is_set(), "a push wakes the subscriber"
    assert subscription.pop() is first
    assert subscription.queued == 2
    subscription.push(_batch(_events(["create"] * 4)))  # 2 + 4 > 5
    assert subscription.overflowed
    assert (subscription.queued, subscription.pop()) == (0, None), "the queue is dropped, not kept in part"
    subscription.push(_batch(_events(["create"])))  # ignored until the subscriber has read from the stream
    assert subscription.pop() is None


def test_events_the_subscriber_filters_out_do_not_count_against_its_queue() -> None:
    subscription = Subscription(QUEUE, _clock(_settings()), CREATES)
    for _ in range(QUEUE):
        subscription.push(_batch(_events(["update"] * 100 + ["create"] + ["delete"] * 100)))
    assert (subscription.queued, subscription.overflowed, len(subscription.batches)) == (QUEUE, False, QUEUE)
    subscription.push(_batch(_events(["read"] * 1000)))
    assert not subscription.overflowed
    subscription.push(_batch(_events(["create"])))
    assert subscription.overflowed


def test_a_queue_of_unwanted_batches_is_still_bounded_in_batches() -> None:
    subscription = Subscription(QUEUE, _clock(_settings()), CREATES)
    unwanted = _batch(_events(["update"]))
    for _ in range(MAX_QUEUED_BATCHES):
        subscription.push(unwanted)
    assert not subscription.overflowed
    subscription.push(unwanted)
    assert subscription.overflowed and not subscription.batches


# The subscriber behind it.


def test_an_overflowed_subscriber_reads_every_event_from_the_stream_in_order() -> None:
    async def scenario(feed: InMemoryFeed) -> None:
        feed.append(0, ["create"] * 3)  # before the subscription: not part of it
        clock = _clock(feed.settings)
        watch = feed.watch(clock, None, EVERYTHING)
        event, start = await anext(watch)
        assert event is None, "the first message is the starting position"
        start_anchors = list(start.anchors)
        first = feed.publish(0, ["create"] * 3)
        second = feed.publish(0, ["update"] * 2)
        assert not next(iter(feed.subscriptions)).overflowed
        reads_before = feed.reads
        # The subscriber is in the middle of the first batch when the queue overflows.
        got = await _next_events(watch, 1)
        third = feed.publish(1, ["delete"] * 4)  # 2 queued + 4 > 5
        fourth = feed.publish(0, ["create"])  # while overflowed: not queued, read from the stream
        assert next(iter(feed.subscriptions)).overflowed
        got += await _next_events(watch, 9)
        # Each event once, each partition's in order (the partitions are caught up one after the other).
        assert [e for e, _ in got if e.partition == 0] == first + second + fourth
        assert [e for e, _ in got if e.partition == 1] == third
        assert len(got) == 10
        assert feed.reads > reads_before, "the dropped batches were read from the stream"
        # Each event's position is the one after it: a token taken there resumes right after it.
        for event, anchors in got:
            assert anchors[event.partition] == event.anchor
        assert got[-1][1] == [fourth[-1].anchor, third[-1].anchor]
        assert start_anchors == [feed.streams[0][2].anchor, BEFORE_FIRST]
        # Level again: the next batch comes from the queue, with no read of the stream.
        reads_before = feed.reads
        fifth = feed.publish(1, ["update"] * 2)
        assert [e for e, _ in await _next_events(watch, 2)] == fifth
        assert feed.reads == reads_before
        await watch.aclose()

    _run(scenario)


def test_a_subscriber_that_filters_gets_only_what_it_wants_after_an_overflow() -> None:
    async def scenario(feed: InMemoryFeed) -> None:
        watch = feed.watch(_clock(feed.settings), None, CREATES)
        await anext(watch)
        published = []
        for _ in range(4):  # many unwanted events queue without overflowing
            published += feed.publish(0, ["update"] * 50 + ["create"] + ["delete"] * 3)
        assert not next(iter(feed.subscriptions)).overflowed
        published += feed.publish(1, ["create"] * 2)  # 6 wanted > 5
        assert next(iter(feed.subscriptions)).overflowed
        got = await _next_events(watch, 6)
        assert [e for e, _ in got] == [e for e in published if e.type == "create"]
        # Its position stands past the unwanted events too, so a resume does not read them again.
        assert got[-1][1] == [feed.streams[0][-1].anchor, feed.streams[1][-1].anchor]
        await watch.aclose()

    _run(scenario)


def test_a_resumed_subscriber_catches_up_from_its_token_then_reads_its_queue() -> None:
    async def scenario(feed: InMemoryFeed) -> None:
        missed = feed.append(0, ["create"] * 4) + feed.append(1, ["update"] * 3)
        position = Position([BEFORE_FIRST] * PARTITIONS, await feed.tokens())
        resumed = await feed.resume(position.token())
        watch = feed.watch(_clock(feed.settings), resumed, EVERYTHING)
        assert (await anext(watch))[0] is None
        queued = feed.publish(0, ["delete"])
        got = await _next_events(watch, len(missed) + 1)
        assert [e for e, _ in got] == missed + queued
        await watch.aclose()

    _run(scenario)


def test_a_stopped_subscription_ends_and_leaves_the_feed() -> None:
    async def scenario(feed: InMemoryFeed) -> None:
        clock = _clock(feed.settings)
        watch = feed.watch(clock, None, EVERYTHING)
        await anext(watch)
        assert len(feed.subscriptions) == 1 and feed._tailers
        published = feed.publish(0, ["create"] * 2)
        clock.stop(StreamEnded("the server is shutting down; reconnect"))
        # What was already queued may still go out; then the stream ends with the stop's error.
        got: list[Event] = []
        with pytest.raises(StreamEnded):
            async for event, _ in watch:
                if event is not None:
                    got.append(event)
        assert got == published[: len(got)]
        assert not feed.subscriptions, "the subscription left the feed"
        assert not feed._tailers, "the last one leaving stops the tail readers"

    _run(scenario)


def test_a_stopped_subscription_ends_during_a_long_catch_up() -> None:
    async def scenario(feed: InMemoryFeed) -> None:
        clock = _clock(feed.settings)
        watch = feed.watch(clock, None, CREATES)
        await anext(watch)
        for _ in range(3):  # each batch alone fits; together they overflow, and none of it is wanted
            feed.publish(0, ["update"] * 2500 + ["create"] * 2)
        assert next(iter(feed.subscriptions)).overflowed
        clock.stop(StreamEnded("the server is shutting down; reconnect"))
        with pytest.raises(StreamEnded):
            await _next_events(watch, 6)
        assert not feed.subscriptions

    _run(scenario)
