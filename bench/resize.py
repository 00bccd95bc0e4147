"""How long a resize's window lasts (`profilemesh cluster resize`, docs/deploying.md §6), by data size.

    .venv/bin/python -m bench.resize [--profiles 100000] [--from 16] [--to 256] [--out FILE]

A system of its own on free ports, its profiles and each one's read count written straight into the cluster,
its services stopped; then the resize, timed from the command's start to its end (checks, copy, check of the
copy, switch, removal of the old keyspace).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
import time
from pathlib import Path

from bench.bulk import bulk_write
from bench.seeding import load_profiles
from common.storage import keys
from common.storage.resize import Report, ResizeRefused, resize
from localdev.system import System, on_free_ports

PREFIX = "resize-user-"


def _seed_reads(system: System, profiles: int, partitions: int) -> None:
    rng = random.Random(7)
    bulk_write(
        system.cluster.admin_url,
        [
            (
                "ZADD",
                keys.reads_key(keys.partition_of(f"{PREFIX}{i}", partitions)),
                str(rng.randint(1, 50)),
                f"{PREFIX}{i}",
            )
            for i in range(profiles)
        ],
    )


def _resize(system: System, partitions: int) -> Report:
    """The resize, once the stopped aggregator's heartbeat has run out."""
    settings = system.client_settings()
    deadline = time.monotonic() + 30
    while True:
        try:
            return asyncio.run(resize(settings, partitions))
        except ResizeRefused as error:
            if "still live" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def measure(work: Path, profiles: int, source: int, target: int) -> Report:
    system = on_free_ports(work, {"PROFILEMESH_PARTITIONS": str(source), "PROFILEMESH_LOG_LEVEL": "WARNING"})
    try:
        system.start(timeout_s=180)
        load_profiles(system.cluster.admin_url, PREFIX, 0, profiles, source)
        _seed_reads(system, profiles, source)
        system.stop_services()
        return _resize(system, target)
    finally:
        system.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profiles", type=int, default=100_000)
    parser.add_argument("--from", dest="source", type=int, default=16)
    parser.add_argument("--to", dest="target", type=int, default=256)
    parser.add_argument("--out", type=Path, default=None)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="profilemesh-resize-") as work:
        report = measure(Path(work), options.profiles, options.source, options.target)
    line = (
        f"| {options.profiles:,} | {options.source} -> {options.target} | {report.seconds:.1f} s | "
        f"{report.copied.profiles:,} | {report.copied.users_with_reads:,} | {report.removed_keys:,} |"
    )
    print(line)
    if options.out is not None:
        with options.out.open("a") as out:
            out.write(line + "\n")


if __name__ == "__main__":
    main()
