"""Key names: the one place that knows how profilemesh lays out its data in the cluster.

Everything a partition needs shares the hash tag ``{pNN}`` and so one slot, which lets a
single script change a profile and append its event atomically.
"""

from __future__ import annotations

import zlib

# Records the partition count on first start; it is fixed for the life of a deployment.
PARTITIONS_KEY = "profilemesh:partitions"

EVENT_TYPES = ("create", "read", "update", "delete")


def partition_of(user: str, partitions: int) -> int:
    return zlib.crc32(user.encode("utf-8")) % partitions


def tag(partition: int) -> str:
    return f"{{p{partition:02d}}}"


def profile_key(user: str, partitions: int) -> str:
    return f"profile:{tag(partition_of(user, partitions))}:{user}"


def events_key(partition: int) -> str:
    return f"events:{tag(partition)}"


def reads_key(partition: int) -> str:
    return f"stats:reads:{tag(partition)}"


def totals_key(partition: int) -> str:
    return f"stats:totals:{tag(partition)}"


def deleted_key(partition: int) -> str:
    """Hash: user -> id of the user's latest delete event, so a late read can't resurrect them."""
    return f"stats:deleted:{tag(partition)}"


def deleted_at_key(partition: int) -> str:
    """Sorted set: the same tombstones by time, so maintenance can forget the old ones."""
    return f"stats:deleted-at:{tag(partition)}"
