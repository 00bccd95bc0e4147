"""Key names: the one place that knows how profilemesh lays out its data in the cluster.

Everything a partition needs shares the hash tag ``{pNN}`` and so one slot, which lets a
single script change a profile and append its event atomically.
"""

from __future__ import annotations

import zlib

# Records the partition count on first start; it is fixed for the life of a deployment.
PARTITIONS_KEY = "profilemesh:partitions"

EVENT_TYPES = ("create", "read", "update", "delete")

# Every key starts with one of these: profile_svc owns profiles, the event streams are shared,
# the aggregator writes statistics and reporting_svc reads them (common/acl.py builds on this).
PROFILE_PREFIX = "profile:"
EVENTS_PREFIX = "events:"
STATS_PREFIX = "stats:"


def partition_of(user: str, partitions: int) -> int:
    return zlib.crc32(user.encode("utf-8")) % partitions


def tag(partition: int) -> str:
    return f"{{p{partition:02d}}}"


def profile_key(user: str, partitions: int) -> str:
    return f"{PROFILE_PREFIX}{tag(partition_of(user, partitions))}:{user}"


def events_key(partition: int) -> str:
    return f"{EVENTS_PREFIX}{tag(partition)}"


def reads_key(partition: int) -> str:
    return f"{STATS_PREFIX}reads:{tag(partition)}"


def totals_key(partition: int) -> str:
    return f"{STATS_PREFIX}totals:{tag(partition)}"


def deleted_key(partition: int) -> str:
    """Hash: user -> id of the user's latest delete event, so a late read can't resurrect them."""
    return f"{STATS_PREFIX}deleted:{tag(partition)}"


def deleted_at_key(partition: int) -> str:
    """Sorted set: the same tombstones by time, so maintenance can forget the old ones."""
    return f"{STATS_PREFIX}deleted-at:{tag(partition)}"


def recount_key(partition: int) -> str:
    """Hash: the partition's recounts in progress (aggregator_svc/scripts/recount_step.lua lays it out)."""
    return f"{STATS_PREFIX}recount:{tag(partition)}"
