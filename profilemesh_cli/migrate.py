"""`profilemesh cluster migrate`: load this version's function libraries (common/storage/functions.py) into
every primary of the cluster, as the admin; the services may not load code themselves.

Idempotent: a library already there with the same text is left alone, so it is safe to run on every deploy and
again after a primary joins (a new, empty primary has no functions; a replica gets its primary's by replication,
so replicas are never written to). `--prune` removes profilemesh libraries of other versions: run it once no
process of an older version is left. Prints one line per primary and library saying what it did; the work is
common/storage/migration.py's.
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
    text = "operate the cluster as its admin: `cluster migrate` loads the services' functions"
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


def cmd_cluster(args: argparse.Namespace, endpoints: Any) -> int:
    settings: Settings = endpoints.settings
    try:
        changes = asyncio.run(migrate(settings, prune=args.prune))
    except StorageError as error:
        where = settings.redis_url.split("@")[-1]
        print(f"error: cannot migrate the cluster at {where}: {type(error).__name__}: {error}", file=sys.stderr)
        return 2
    print(json.dumps([asdict(c) for c in changes], indent=2) if args.json else render(changes))
    return 1 if not changes or any(change.outcome == FAILED for change in changes) else 0
