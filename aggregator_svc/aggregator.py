"""The aggregator's loop: read each partition's stream through the consumer group, apply, acknowledge.

The replicas share the partitions (share.py); when two consume one (a handover) the consumer group hands
each entry to one of them, and the apply script (see scripts/apply_events.lua) makes the count exact even
when a slow replica and one that reclaimed its entries both try to apply them, in any order.

An idle partition waits for a wake-up by sharded pub/sub (one subscription per primary,
common/storage/wakes.py), which the script appending its next event sends. What a partition costs while
nothing happens stays flat as partitions grow: the partitions with recent events are reclaimed, trimmed
and recounted every maintenance interval, the quiet ones a slice at a time; the scripts of one instant
share a pipeline per primary, and one partition on a shard that is down fails alone.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from pathlib import Path
from typing import Any

from aggregator_svc.share import Share
from common.errors import ClusterUnavailable, NoGroup, StorageError
from common.runtime import metrics
from common.runtime.config import AggregatorSettings
from common.storage import keys
from common.storage.cluster import Cluster
from common.storage.replies import text

log = logging.getLogger(__name__)

SCRIPTS = Path(__file__).parent / "scripts"
APPLY_SCRIPT = SCRIPTS / "apply_events.lua"
TRIM_SCRIPT = SCRIPTS / "trim_acknowledged.lua"
RECOUNT_SCRIPT = SCRIPTS / "recount_step.lua"
# Entries one recount step reads: keeps each step's script well under 50 ms (tests/test_script_time.py).
RECOUNT_STEP = 500
RETRY_S = 0.5  # a partition's first retry after its cluster calls failed; each next one waits twice as long,
MAX_RETRY_S = 2.0  # up to this: a shard that is down holds a third of 4,096 partitions, each retrying
TAKE_DEADLINE_S = 2.0  # a take's script and its retries (a take applies what it takes: ending it early is safe)
# A quiet partition is looked after (reclaimed, trimmed, recounted) on one quiet check in this many; the others
# only take it, for a wake-up that was lost. Its entries were trimmed while it had recent events; what is left
# to do there is another replica's (a consumer of one that died, a recount half done before the partition fell
# to this one) or an older version's (entries read apart from applying them, left pending).
QUIET_LOOK_AFTER_EVERY = 10
QUIET_LOOKING = 16  # quiet partitions looked after at once (_maintenance)
# Consumers with nothing pending and idle this long (a crashed or retired replica) are removed.
FORGET_CONSUMER_AFTER_MS = 10 * 60 * 1000

Entry = tuple[bytes, dict[bytes, bytes]]


def apply_keys(partition: int, generation: int = 0) -> list[str]:
    """The keys apply_events.lua takes, in its order."""
    return [
        keys.events_key(partition, generation),
        keys.reads_key(partition, generation),
        keys.totals_key(partition, generation),
        keys.deleted_key(partition, generation),
        keys.deleted_at_key(partition, generation),
        keys.recount_key(partition, generation),
    ]


def take_keys(partition: int, generation: int = 0) -> list[str]:
    """The keys apply_events.lua takes with '>': apply_keys and the partition's wake flag, which it sets when
    it finds nothing."""
    return [*apply_keys(partition, generation), keys.wake_key(partition, generation)]


def trim_keys(partition: int, generation: int = 0) -> list[str]:
    """The keys trim_acknowledged.lua takes, in its order."""
    return [
        keys.events_key(partition, generation),
        keys.deleted_key(partition, generation),
        keys.deleted_at_key(partition, generation),
        keys.recount_key(partition, generation),
        keys.trimmed_key(partition, generation),
    ]


def recount_keys(partition: int, generation: int = 0) -> list[str]:
    """The keys recount_step.lua takes, in its order."""
    return [
        keys.events_key(partition, generation),
        keys.reads_key(partition, generation),
        keys.recount_key(partition, generation),
    ]


def _settle(waiter: asyncio.Future[bool], woken: bool) -> None:
    if not waiter.done():
        waiter.set_result(woken)


class Aggregator:
    def __init__(self, cluster: Cluster, settings: AggregatorSettings) -> None:
        self.cluster = cluster
        self.group = settings.group
        self.consumer = settings.consumer
        self.batch = settings.batch
        self.claim_idle_ms = settings.claim_idle_ms
        self.maintenance_s = settings.maintenance_s
        # The quiet partitions are looked after in this many slices, one per maintenance interval.
        self.slices = max(1, settings.quiet_check_s // settings.maintenance_s)
        self.retention_ms = settings.retention_s * 1000
        self.linger_s = settings.linger_ms / 1000
        self.partitions = range(settings.partitions)
        # Each is a no-op for what a first run did: a connection lost under one is a reason to run it again.
        self._apply = cluster.script(APPLY_SCRIPT, repeatable=True)
        self._trim = cluster.script(TRIM_SCRIPT, repeatable=True)
        self._recount_step = cluster.script(RECOUNT_SCRIPT, repeatable=True)
        self.share = Share(cluster, settings.consumer, self.partitions, settings.claim_idle_ms, self._wake_up)
        # Set when an apply queued a recount on the partition, so its recount loop starts at once.
        self._recount_due = {partition: asyncio.Event() for partition in self.partitions}
        # An idle partition's wake-up (its next event, or its subscription made anew): the future its consume loop
        # awaits, or True when the wake-up came while no loop waited.
        self._wake: dict[int, asyncio.Future[bool] | bool] = dict.fromkeys(self.partitions, False)
        self.generation = 0  # the layout's, read by run() before anything touches a key
        # Until when (monotonic) a partition counts as having recent events: its entries are still to be trimmed.
        self._active_until = dict.fromkeys(self.partitions, 0.0)
        self._active_s = settings.retention_s + 2 * settings.maintenance_s
        # A partition's failed cluster calls in a row (its loop's, or a look-after's): while any, its maintenance,
        # which would fail too, is left out; its loop's next call that works clears them.
        self._failures = dict.fromkeys(self.partitions, 0)

    async def run(self) -> None:
        """Consume every partition until cancelled; an unexpected failure of one loop ends them all (a task
        group, unlike gather, cancels the others), so the process shuts down rather than half-running."""
        await self.cluster.layout_checked()  # every key name needs the layout's generation
        self.generation = self.cluster.generation
        async with asyncio.TaskGroup() as loops:
            loops.create_task(self._watch_wakes())
            loops.create_task(self._maintenance())
            loops.create_task(self.share.run())
            for partition in self.partitions:
                loops.create_task(self._consume(partition))
                loops.create_task(self._recounts(partition))

    async def _watch_wakes(self) -> None:
        await self.cluster.watch_wakes(self.partitions, self._wake_up)

    def _wake_up(self, partition: int) -> None:
        waiter = self._wake[partition]
        if isinstance(waiter, asyncio.Future):
            _settle(waiter, True)
        else:
            self._wake[partition] = True

    def _until_quiet_check(self, partition: int) -> float:
        """Seconds to the partition's next quiet check: the next maintenance instant of its slice."""
        now = time.monotonic()
        tick = int(now // self.maintenance_s) + 1
        tick += (partition - tick) % self.slices
        return tick * self.maintenance_s - now

    async def _woken_before_idle_check(self, partition: int) -> bool:
        """Wait for the partition's wake-up: True when it came, False when its quiet check came due first (the
        partitions of a slice together, so that their takes share pipelines): a wake-up lost with a
        connection, or never sent (a profile_svc older than the wake flags), costs that much lag at most.
        A plain future, not asyncio.wait_for, which can swallow a cancellation on 3.11."""
        if self._wake[partition] is True:
            self._wake[partition] = False
            return True
        loop = asyncio.get_running_loop()
        waiter = self._wake[partition] = loop.create_future()
        due = loop.call_later(self._until_quiet_check(partition), _settle, waiter, False)
        try:
            return bool(await waiter)
        finally:
            due.cancel()
            self._wake[partition] = False

    async def _ensure_group(self, partition: int) -> None:
        """Create the group from the stream's first entry, so events written before any aggregator ran count."""
        await self.cluster.create_group(keys.events_key(partition, self.generation), self.group)

    async def _consume(self, partition: int) -> None:
        stream = keys.events_key(partition, self.generation)
        group_ready = False
        own_pending = True  # whether to look for entries delivered to us but never applied
        while True:
            try:
                if not group_ready:
                    await self._ensure_group(partition)
                    group_ready = True
                if own_pending:
                    # Entries delivered to us but never applied (a replica of an older version read them
                    # apart from applying them, or died between): take them back first, at the start and
                    # after every error, rather than waiting for them to be reclaimed as idle. A take applies
                    # and acknowledges in one script, so none are left pending by this version.
                    entries = await self.cluster.read_own_pending(stream, self.group, self.consumer, self.batch)
                    self._working(partition)
                    if entries:
                        await self._apply_entries(partition, entries)
                    own_pending = len(entries) == self.batch
                    continue
                if partition not in self.share.owned:  # another replica's: wait until it may be ours
                    await self._woken_before_idle_check(partition)
                    continue
                taken = await self._take(partition)
                self._working(partition)
                # Idle (the take armed the partition's wake flag): wait for the next event's wake-up. None by
                # the idle check: take again, which also finds a stream flushed or failed over in the meantime.
                if not taken and not await self._woken_before_idle_check(partition):
                    continue
                if taken < self.batch and self.linger_s:
                    # A trickle: let the next batch gather for a moment rather than paying a script per
                    # event. Bounds the added lag; an idle partition waits above instead. Every partition
                    # wakes on the same tick, so the event loop wakes once for all of them.
                    await asyncio.sleep(self.linger_s - time.monotonic() % self.linger_s)
            except NoGroup:  # the stream was deleted (e.g. a flushed cluster)
                own_pending = True
                group_ready = False
            except StorageError as error:
                own_pending = True
                self._failures[partition] += 1
                if self._failures[partition] == 1:  # once per outage: a shard down is thousands of partitions
                    log.warning("partition %d: cluster unavailable: %r", partition, error)
                await asyncio.sleep(min(MAX_RETRY_S, RETRY_S * 2 ** (self._failures[partition] - 1)))

    def _working(self, partition: int) -> None:
        """A call of the partition's worked. After failures, it is looked after at the next instants, as one with
        recent events is: its maintenance was left out while they failed, and a quiet partition's turn may be
        a whole round of quiet checks away (at 4,096 partitions, 20 s with the suite's settings)."""
        if self._failures[partition]:
            self._failures[partition] = 0
            self._active_until[partition] = max(self._active_until[partition], time.monotonic() + self._active_s)

    async def _take(self, partition: int) -> int:
        """Take the group's next entries for us, apply and acknowledge them: one script, their content stays in
        the cluster. Returns how many were taken; when none, the script armed the partition's wake flag. The
        partitions that take on the same tick send their takes together, one pipeline per primary. Within a
        deadline: the script runner retries a shard that is down for as long as it is given, and the loop's own
        backoff must take over (at 4,096 partitions, a third of them retrying every 0.2 s took a whole core)."""
        try:
            async with asyncio.timeout(TAKE_DEADLINE_S):
                applied, gone, taken, _, malformed, queued = await self.cluster.run(
                    self._apply,
                    take_keys(partition, self.generation),
                    [self.group, ">", self.consumer, self.batch],
                    bounded=False,
                    together=True,
                )
        except TimeoutError:
            raise ClusterUnavailable(f"no take of partition {partition} answered within {TAKE_DEADLINE_S} s") from None
        if taken:
            self._active_until[partition] = time.monotonic() + self._active_s
            self._count(partition, int(applied), int(gone), malformed, int(queued))
        return int(taken)

    async def _apply_entries(self, partition: int, entries: list[Entry]) -> int:
        """Apply and acknowledge entries by id; the script reads their content from the stream itself."""
        if not entries:
            return 0
        ids = [entry_id for entry_id, _ in entries]
        applied, gone, malformed, queued = await self.cluster.run(
            self._apply, apply_keys(partition, self.generation), [self.group, *ids]
        )
        self._count(partition, int(applied), int(gone), malformed, int(queued))
        return int(applied)

    def _count(self, partition: int, applied: int, gone: int, malformed: list[Any], queued: int) -> None:
        """Export a batch's figures; say when pending entries were trimmed before anyone applied them, or
        were malformed (acknowledged and skipped: they can never become valid, and left pending they would
        be reclaimed for ever and hold back trimming)."""
        if queued:
            self._recount_due[partition].set()
        if malformed:
            shown = ", ".join(text(entry_id) for entry_id in malformed[:5])
            log.error(
                "partition %d: %d malformed entries (no user, or an unknown type) acknowledged without counting: %s%s",
                partition,
                len(malformed),
                shown,
                ", ..." if len(malformed) > 5 else "",
            )
            metrics.EVENTS_MALFORMED.inc(len(malformed))
        if gone:
            log.warning(
                "partition %d: %d pending entries were no longer in the stream (trimmed); "
                "acknowledged without counting",
                partition,
                gone,
            )
        metrics.BATCHES.inc()
        metrics.EVENTS_APPLIED.inc(applied)

    async def _reclaim(self, partition: int) -> None:
        """Take over entries another consumer left pending too long (it crashed or stalled)."""
        stream = keys.events_key(partition, self.generation)
        start: Any = "0-0"
        while True:
            start, entries = await self.cluster.claim_idle(
                stream, self.group, self.consumer, self.claim_idle_ms, start, self.batch
            )
            if entries:
                metrics.RECLAIMED.inc(len(entries))
                applied = await self._apply_entries(partition, entries)
                log.info("partition %d: reclaimed %d entries, applied %d", partition, len(entries), applied)
            if start in (b"0-0", "0-0"):
                break

    async def _maintenance(self) -> None:
        """Every maintenance interval: look after the partitions due, those with recent events all at once (their
        scripts share a pipeline per primary), the quiet ones queued and QUIET_LOOKING at a time (a round of
        quiet checks at 4,096 partitions is hundreds, thousands with the suite's settings, and the busy partitions'
        look-afters must not wait behind them for places within the concurrency bound). An instant does not wait
        for the last one's stragglers: a partition on a shard that is down waits out its timeouts, and the
        others' maintenance must not wait with it (at 4,096 partitions a third of them can be there). A partition
        still being looked after sits the instant out."""
        looking: dict[int, asyncio.Task[None]] = {}
        quiet_queue: dict[int, None] = {}  # in order, each once
        looking_quiet: set[int] = set()  # those of `looking` started from the queue
        failed: list[BaseException] = []

        def start(partition: int) -> None:
            looking[partition] = task = asyncio.create_task(self._look_after(partition))
            task.add_done_callback(functools.partial(done, partition))

        def done(partition: int, task: asyncio.Task[None]) -> None:
            del looking[partition]
            looking_quiet.discard(partition)
            error = None if task.cancelled() else task.exception()
            if error is not None:
                failed.append(error)
            start_quiet()

        def start_quiet() -> None:
            while quiet_queue and len(looking_quiet) < QUIET_LOOKING:
                partition = next(iter(quiet_queue))
                del quiet_queue[partition]
                if partition not in looking:
                    looking_quiet.add(partition)
                    start(partition)

        try:
            while True:
                await asyncio.sleep(self.maintenance_s - time.monotonic() % self.maintenance_s)
                if failed:  # a defect, not the cluster's failure (_look_after outlives those): end every loop
                    raise failed[0]
                active, quiet = self._due(time.monotonic())
                for partition in active:
                    if partition not in looking:
                        start(partition)
                quiet_queue.update(dict.fromkeys(quiet))
                start_quiet()
        finally:
            quiet_queue.clear()  # a look-after that ends now starts no other
            for task in list(looking.values()):
                task.cancel()
            await asyncio.gather(*looking.values(), return_exceptions=True)

    def _due(self, now: float) -> tuple[list[int], list[int]]:
        """The partitions to look after at the maintenance instant `now`: those with recent events, and on one
        round of quiet checks in QUIET_LOOK_AFTER_EVERY, the quiet ones of the instant's slice; none whose
        cluster calls are failing."""
        tick = round(now / self.maintenance_s)
        quiet_round = tick // self.slices % QUIET_LOOK_AFTER_EVERY == 0
        owned = [p for p in self.share.owned if not self._failures[p]]
        active = [p for p in owned if self._active_until[p] > now]
        if not quiet_round:
            return active, []
        return active, [p for p in owned if p % self.slices == tick % self.slices and self._active_until[p] <= now]

    async def _look_after(self, partition: int) -> None:
        """Reclaim, trim and recount one partition, outliving the failures a cluster can have."""
        try:
            await self._reclaim(partition)
            await self._maintain(partition)
            self._recount_due[partition].set()  # those another replica queued or left half done
        except NoGroup:  # not created yet, or a flushed cluster: _consume makes it
            pass
        except StorageError as error:
            # An idle partition's loop finds no failure (it waits for a wake-up): left out from here on too,
            # until a take of its loop works.
            self._failures[partition] += 1
            if self._failures[partition] == 1:
                log.warning("maintenance of partition %d: cluster unavailable: %r", partition, error)

    async def _maintain(self, partition: int) -> None:
        # One run forgets a bounded number of tombstones; run again until it has forgotten every one due,
        # so forgetting keeps up with any delete rate.
        while True:
            _, more = await self.cluster.run(
                self._trim,
                trim_keys(partition, self.generation),
                [self.group, FORGET_CONSUMER_AFTER_MS, self.retention_ms],
                together=True,
            )
            metrics.TRIMS.inc()
            if not int(more):
                return

    async def _recounts(self, partition: int) -> None:
        """Walk the partition's recounts in bounded steps: at once when an apply queued one, and when the
        partition is looked after, for those another replica queued or left half done."""
        due = self._recount_due[partition]
        while True:
            await due.wait()
            due.clear()
            try:
                while True:
                    _, more = await self.cluster.run(
                        self._recount_step,
                        recount_keys(partition, self.generation),
                        [self.group, RECOUNT_STEP],
                        together=True,
                    )
                    metrics.RECOUNT_STEPS.inc()
                    if not int(more):
                        break
            except NoGroup:  # not created yet, or a flushed cluster: _consume makes it
                pass
            except StorageError as error:
                log.warning("recount of partition %d: cluster unavailable: %r", partition, error)
