"""Key names: the one place that knows how profilemesh lays out its data in the cluster.

Everything a partition needs shares the hash tag ``{pNN}`` and so one slot, which lets a
single script change a profile and append its event atomically.
"""

from __future__ import annotations

import zlib
from enum import StrEnum
from typing import NamedTuple

# Records the partition layout on first start (layout_record): the partition count, and the keyspace generation
# a resize made (profilemesh cluster resize, common/storage/resize.py); fixed between resizes.
PARTITIONS_KEY = "profilemesh:partitions"
# Sorted set: the live aggregator replicas, by when their word runs out (aggregator_svc/scripts/heartbeat.lua).
AGGREGATORS_KEY = "profilemesh:aggregators"
# A random secret recorded by profile_svc on first start: it signs the change feed's resume tokens, so a
# token names the deployment that issued it and can't be forged (profile_svc/events_feed.py).
DEPLOYMENT_KEY = "profilemesh:deployment"


class EventType(StrEnum):
    """What an event records; the `type` field of a stream entry, and the names of the statistics' counts."""

    CREATE = "create"
    READ = "read"
    UPDATE = "update"
    DELETE = "delete"


EVENT_TYPES = tuple(EventType)
# What a change-feed subscriber gets when it names no types: the changes, not the reads.
CHANGE_TYPES = (EventType.CREATE, EventType.UPDATE, EventType.DELETE)

# Every key starts with one of these: profile_svc owns profiles, the event streams are shared,
# the aggregator writes statistics and reporting_svc reads them (common/storage/acl.py builds on this).
PROFILE_PREFIX = "profile:"
EVENTS_PREFIX = "events:"
STATS_PREFIX = "stats:"
WAKE_PREFIX = "wake:"
FEED_PREFIX = "feed:"  # profile_svc's change feed: where its tail readers have stood


def partition_of(user: str, partitions: int) -> int:
    return zlib.crc32(user.encode("utf-8")) % partitions


def tag(partition: int, generation: int = 0) -> str:
    """The partition's hash tag. A resize fills a new keyspace from the old one, so each generation of the
    layout has names of its own (`{p03}` in the first, `{p03.g1}` after one resize); the ACL rules' `{p*}`
    covers them all."""
    return f"{{p{partition:02d}}}" if generation == 0 else f"{{p{partition:02d}.g{generation}}}"


def profile_key(user: str, partitions: int, generation: int = 0) -> str:
    return f"{PROFILE_PREFIX}{tag(partition_of(user, partitions), generation)}:{user}"


def fence_key(partition_key: str) -> str:
    """The fence of the partition of `partition_key` (any key of it): profile_svc's read check sets it right
    before WAIT, so WAIT covers every write the primary has made, not only the calling connection's.
    It can't be taken for a profile: no `:` follows the tag."""
    start = partition_key.index("{")
    return f"{PROFILE_PREFIX}{partition_key[start : partition_key.index('}', start) + 1]}#fence"


def events_key(partition: int, generation: int = 0) -> str:
    return f"{EVENTS_PREFIX}{tag(partition, generation)}"


def wake_key(partition: int, generation: int = 0) -> str:
    """String: '1' while the aggregator waits for the partition's next event (a take found nothing). The
    script that appends that event sets it to '0' and publishes on the sharded channel of the same name,
    so an idle partition costs the aggregator a subscription, not a blocking read, and a busy one nothing."""
    return f"{WAKE_PREFIX}{tag(partition, generation)}"


def trimmed_key(partition: int, generation: int = 0) -> str:
    """Hash: the id, offset and time of the last entry trimmed from the partition's stream, so the change
    feed can tell a position trimmed exactly up to from one whose history changed (a lossy failover)."""
    return f"{EVENTS_PREFIX}{tag(partition, generation)}:trimmed"


def checkpoint_key(chain: str, block: int) -> str:
    """List: one block of a change-feed tail reader's chain of states (profile_svc/feed_checkpoints.py), which
    resume tokens name. A chain's blocks share its hash tag, and so one slot."""
    return f"{FEED_PREFIX}{{{chain}}}:{block}"


def reads_key(partition: int, generation: int = 0) -> str:
    return f"{STATS_PREFIX}reads:{tag(partition, generation)}"


def totals_key(partition: int, generation: int = 0) -> str:
    return f"{STATS_PREFIX}totals:{tag(partition, generation)}"


def deleted_key(partition: int, generation: int = 0) -> str:
    """Hash: user -> id of the user's latest delete event, so a late read can't resurrect them."""
    return f"{STATS_PREFIX}deleted:{tag(partition, generation)}"


def deleted_at_key(partition: int, generation: int = 0) -> str:
    """Sorted set: the same tombstones by time, so maintenance can forget the old ones."""
    return f"{STATS_PREFIX}deleted-at:{tag(partition, generation)}"


def recount_key(partition: int, generation: int = 0) -> str:
    """Hash: the partition's recounts in progress (aggregator_svc/scripts/recount_step.lua lays it out)."""
    return f"{STATS_PREFIX}recount:{tag(partition, generation)}"


def top_outbox_key(partition: int, generation: int = 0) -> str:
    """Hash: the partition's users whose reads changed since the top list's index last had them, user ->
    "<version> <score>" ("<version> -" once the user has none), noted by the scripts that count
    (aggregator_svc/scripts/helpers.lua) atomically with the count; '#version' holds the last version given and
    '#indexed' is set once every user the partition held was noted (reindex_partition.lua)."""
    return f"{STATS_PREFIX}top-outbox:{tag(partition, generation)}"


# The top list's index is split over this many sorted sets at most (fewer when there are fewer partitions):
# few enough that a top list reads a handful of keys whatever the partition count, enough to spread its writes.
TOP_BUCKETS = 16


def top_buckets(partitions: int) -> int:
    return min(partitions, TOP_BUCKETS)


def top_bucket_of(partition: int, partitions: int) -> int:
    return partition % top_buckets(partitions)


def top_tag(bucket: int, generation: int = 0) -> str:
    """A bucket's hash tag, `{t03}`: a slot of its own, apart from every partition's (the ACL's `{t*}`)."""
    return f"{{t{bucket:02d}}}" if generation == 0 else f"{{t{bucket:02d}.g{generation}}}"


def top_key(bucket: int, generation: int = 0) -> str:
    """Sorted set: user -> reads, for every user of the bucket's partitions (partition p is in bucket
    p mod top_buckets): the top list's index, which the aggregator copies the partitions' outboxes into."""
    return f"{STATS_PREFIX}top:{top_tag(bucket, generation)}"


def top_versions_key(bucket: int, generation: int = 0) -> str:
    """Hash: user -> the version of the score the bucket holds for the user (or of the user's removal), so that a
    late copy never replaces a newer one (aggregator_svc/scripts/index_top.lua)."""
    return f"{STATS_PREFIX}top-versions:{top_tag(bucket, generation)}"


def partition_keys(partition: int, generation: int = 0) -> list[str]:
    """Every key of the partition that is not a profile: what a resize removes with the old layout."""
    return [
        *(
            key_of(partition, generation)
            for key_of in (
                events_key,
                trimmed_key,
                wake_key,
                reads_key,
                totals_key,
                deleted_key,
                deleted_at_key,
                recount_key,
                top_outbox_key,
            )
        ),
        fence_key(events_key(partition, generation)),
    ]


class Layout(NamedTuple):
    """A deployment's partitions as PARTITIONS_KEY records them."""

    partitions: int
    generation: int = 0
    # While a resize runs: the layout it makes. The services refuse to start until it is done.
    resizing_to: Layout | None = None


def layout_record(layout: Layout) -> str:
    """ "16" (a first layout: what every version before resizes recorded), "4096 g1", or "16 -> 4096 g1" while
    a resize runs."""
    own = str(layout.partitions) if layout.generation == 0 else f"{layout.partitions} g{layout.generation}"
    return own if layout.resizing_to is None else f"{own} -> {layout_record(layout.resizing_to)}"


def parse_layout(record: str) -> Layout:
    """The layout a PARTITIONS_KEY record holds; ValueError if it holds none."""
    own, arrow, target = record.partition(" -> ")
    count, _, generation = own.strip().partition(" g")
    parsed = Layout(int(count), int(generation) if generation else 0, parse_layout(target) if arrow else None)
    if parsed.partitions < 1 or parsed.generation < 0:
        raise ValueError(f"not a partition layout: {record!r}")
    return parsed
