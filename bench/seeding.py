"""Data for the benchmarks, written straight into the cluster (no services involved)."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator

from bench.bulk import Command, bulk_write
from common.storage import keys

BATCH = 100_000  # commands encoded per bulk write, to bound the memory a million profiles take


def _fields(user: str) -> list[str]:
    return ["email", f"{user}@example.com", "username", user]


def _in_batches(commands: Iterator[Command], url: str) -> int:
    sent, batch = 0, []
    for command in commands:
        batch.append(command)
        if len(batch) >= BATCH:
            sent += bulk_write(url, batch)
            batch = []
    return sent + (bulk_write(url, batch) if batch else 0)


def load_profiles(url: str, prefix: str, start: int, stop: int, partitions: int) -> int:
    """profilemesh profiles `prefix<i>` for i in [start, stop), under common.storage.keys names."""
    return _in_batches(
        (("HSET", keys.profile_key(f"{prefix}{i}", partitions), *_fields(f"{prefix}{i}")) for i in range(start, stop)),
        url,
    )


def load_baseline_profiles(url: str, prefix: str, count: int) -> int:
    """The same profiles under the seed's key names (`profile:<user>`)."""
    return _in_batches((("HSET", f"profile:{prefix}{i}", *_fields(f"{prefix}{i}")) for i in range(count)), url)


MIX = {"create": 10, "read": 80, "update": 5, "delete": 5}  # percent of each event type


def write_backlog(url: str, events: int, users: int, partitions: int, seed: int = 7, mix: dict[str, int] = MIX) -> int:
    """`events` events in the format profile_svc's scripts write (user, type, ts), each in its user's
    partition stream, over `users` users; types drawn by `mix` (percentages; the REST mix by default)."""
    rng = random.Random(seed)
    names = [f"backlog{i}" for i in range(users)]
    streams = {name: keys.events_key(keys.partition_of(name, partitions)) for name in names}
    kinds = [kind for kind, share in mix.items() for _ in range(share)]

    def commands() -> Iterator[Command]:
        for _ in range(events):
            user = names[rng.randrange(users)]
            yield (
                "XADD",
                streams[user],
                "*",
                "user",
                user,
                "type",
                kinds[rng.randrange(len(kinds))],
                "ts",
                str(int(time.time() * 1000)),
            )

    return _in_batches(commands(), url)
