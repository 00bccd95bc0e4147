"""Growth: bytes per profile in the cluster and read latency at 10,000 and 1,000,000 profiles.

Profiles are bulk-loaded straight into the cluster under common.storage.keys names; memory is the
primaries' INFO used_memory before and after (replicas hold a second copy, not counted), with
MEMORY USAGE of sampled keys beside it (the key and hash alone, without the keyspace overhead).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from redis.cluster import RedisCluster

from bench.results import LoadResult
from bench.seeding import load_profiles
from common.storage import keys

MEMORY_SAMPLES = 200


@dataclass
class GrowthResult:
    profiles: int
    load_s: float
    bytes_per_profile: float  # used_memory delta over the profiles added
    memory_usage_bytes: float  # mean MEMORY USAGE of sampled profile keys
    used_memory_mb: float  # all primaries, after loading
    read: LoadResult


def used_memory(client: RedisCluster) -> int:
    replies = client.info("memory", target_nodes=RedisCluster.PRIMARIES)
    return sum(int(info["used_memory"]) for info in replies.values())


def grow(
    url: str, prefix: str, have: int, want: int, partitions: int, read: Callable[[int], LoadResult]
) -> GrowthResult:
    """Add profiles `prefix<have>`..`prefix<want-1>`, measure memory, then run `read(want)`."""
    client = RedisCluster.from_url(url, decode_responses=True)
    try:
        before = used_memory(client)
        started = time.perf_counter()
        load_profiles(url, prefix, have, want, partitions)
        load_s = time.perf_counter() - started
        after = used_memory(client)
        rng = random.Random(want)
        sampled = [
            client.memory_usage(keys.profile_key(f"{prefix}{rng.randrange(want)}", partitions), samples=0)
            for _ in range(MEMORY_SAMPLES)
        ]
    finally:
        client.close()
    return GrowthResult(
        profiles=want,
        load_s=load_s,
        bytes_per_profile=(after - before) / (want - have),
        memory_usage_bytes=sum(s or 0 for s in sampled) / len(sampled),
        used_memory_mb=after / 2**20,
        read=read(want),
    )
