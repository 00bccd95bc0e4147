"""`profilemesh cluster migrate` and `cluster resize`. migrate: load this version's function libraries
(common/storage/functions.py) into every primary of the cluster, as the admin; the services may not load code
themselves.

Idempotent: a library already there with the same text is left alone, so it is safe to run on every deploy and
again after a primary joins (a new, empty primary has no functions; a replica gets its primary's by replication,
so replicas are never written to). `--prune` removes profilemesh libraries of other versions: run it once no
process of an older version is left. Prints one line per primary and library saying what it did; the work is
common/storage/migration.py's. resize: change the partition count (common/storage/resize.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from dataclasses import asdict
from typing import Any

from common.errors import StorageError
from common.runtime.config import Settings
from common.storage.migration import FAILED, KEPT, LOADED, PRESENT, PRUNED, REPLACED, Change, migrate
from common.storage.resize import MAXIMUM_PARTITIONS, ResizeRefused, resize

__all__ = ["FAILED", "KEPT", "LOADED", "PRESENT", "PRUNED", "REPLACED", "Change", "migrate"]


def render(changes: list[Change]) -> str:
    lines = [f"{c.node:<22} {c.library or '-':<36} {c.outcome}" + (f": {c.error}" if c.error else "") for c in changes]
    counts: dict[str, int] = {}
    for change in changes:
        counts[change.outcome] = counts.get(change.outcome, 0) + 1
    primaries = len({change.node for change in changes})
    summary = ", ".join(f"{outcome} {count}" for outcome, count in counts.items())
    return "\n".join([*lines, f"{primaries} primaries: {summary}"])


def add_command(commands: Any) -> None:
    """`cluster migrate`: the `cluster` command and its one action (main.py's SUBCOMMANDS)."""
    text = (
        "operate the cluster as its admin: `cluster migrate` loads the services' functions, `cluster resize` "
        "changes the partition count"
    )
    cluster = commands.add_parser("cluster", help=text, description=text)
    cluster.set_defaults(handler=cmd_cluster)
    actions = cluster.add_subparsers(dest="action", required=True, metavar="ACTION")
    text = (
        "load this version's function libraries into every primary (as the cluster's admin; idempotent; run "
        "before starting the services, and again after adding a primary)"
    )
    sub = actions.add_parser("migrate", help=text, description=text)
    sub.add_argument("--prune", action="store_true", help="remove profilemesh libraries of other versions")
    sub.add_argument("--json", action="store_true", help="machine-readable JSON output")
    text = (
        "change the partition count: with every service stopped and every event applied, copy the data into a "
        "new keyspace, check it, switch, and remove the old one (docs/deploying.md); safe to run again"
    )
    sub = actions.add_parser("resize", help=text, description=text)
    sub.add_argument(
        "--partitions", type=int, required=True, help=f"the new partition count (1 to {MAXIMUM_PARTITIONS})"
    )
    sub.add_argument("--json", action="store_true", help="machine-readable JSON output")


def cmd_cluster(args: argparse.Namespace, endpoints: Any) -> int:
    settings: Settings = endpoints.settings
    if args.action == "resize":
        return cmd_resize(args, settings)
    try:
        changes = asyncio.run(migrate(settings, prune=args.prune))
    except StorageError as error:
        where = settings.redis_url.split("@")[-1]
        print(f"error: cannot migrate the cluster at {where}: {type(error).__name__}: {error}", file=sys.stderr)
        return 2
    print(json.dumps([asdict(c) for c in changes], indent=2) if args.json else render(changes))
    return 1 if not changes or any(change.outcome == FAILED for change in changes) else 0


def cmd_resize(args: argparse.Namespace, settings: Settings) -> int:
    where = settings.redis_url.split("@")[-1]
    try:
        report = asyncio.run(resize(settings, args.partitions, progress=lambda line: print(line, file=sys.stderr)))
    except ResizeRefused as error:
        print(f"error: not resized: {error}", file=sys.stderr)
        return 1
    except StorageError as error:
        print(f"error: cannot resize the cluster at {where}: {type(error).__name__}: {error}", file=sys.stderr)
        return 2
    if args.json:
        print(
            json.dumps(
                {
                    "source": {"partitions": report.source.partitions, "generation": report.source.generation},
                    "target": {"partitions": report.target.partitions, "generation": report.target.generation},
                    "copied": asdict(report.copied),
                    "check": asdict(report.check),
                    "seconds": round(report.seconds, 3),
                    "removed_keys": report.removed_keys,
                },
                indent=2,
            )
        )
    else:
        copied = report.copied
        print(
            f"resized from {report.source.partitions} to {report.target.partitions} partitions in "
            f"{report.seconds:.1f} s: {copied.profiles} profiles, the reads of {copied.users_with_reads} users "
            f"({copied.reads}), {copied.tombstones} tombstones, totals {copied.totals}; removed "
            f"{report.removed_keys} keys of the old layout"
        )
    return 0
