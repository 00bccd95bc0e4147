"""`profilemesh cluster migrate`: load this version's function libraries (common/storage/functions.py) into
every primary of the cluster, as the admin; the services may not load code themselves.

Idempotent: a library already there with the same text is left alone, so it is safe to run on every deploy and
again after a primary joins (a new, empty primary has no functions; a replica gets its primary's by replication,
so replicas are never written to). `--prune` removes profilemesh libraries of other versions: run it once no
process of an older version is left. Prints one line per primary and library saying what it did.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.exceptions import RedisClusterException, RedisError

from common.runtime.config import Settings
from common.storage import functions
from common.storage.cluster import CLUSTER_SLOTS, connection_options
from common.storage.internals import covered_slots

TIMEOUT_S = 10.0
LOADED, PRESENT, REPLACED, PRUNED, KEPT, FAILED = (
    "loaded",
    "already present",
    "replaced",
    "pruned",
    "kept (another version; --prune removes it)",
    "failed",
)


@dataclass
class Change:
    node: str
    library: str
    outcome: str
    error: str = ""


def _text(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, list):
        return [_text(item) for item in value]
    if isinstance(value, dict):
        return {_text(k): _text(v) for k, v in value.items()}
    return value


async def _present(client: RedisCluster, node: ClusterNode) -> dict[str, str]:
    """The profilemesh libraries on `node`: name -> code."""
    reply = _text(
        await client.execute_command(
            "FUNCTION", "LIST", "LIBRARYNAME", f"{functions.PREFIX}*", "WITHCODE", target_nodes=node
        )
    )
    found = {}
    for entry in reply:
        fields = dict(zip(entry[::2], entry[1::2], strict=True)) if isinstance(entry, list) else entry
        if str(fields["library_name"]).startswith(functions.PREFIX):
            found[fields["library_name"]] = fields["library_code"]
    return found


async def _migrate_node(
    client: RedisCluster, node: ClusterNode, wanted: Iterable[functions.Library], prune: bool
) -> list[Change]:
    changes = []
    try:
        present = await _present(client, node)
        wanted_names = set()
        for library in wanted:
            wanted_names.add(library.name)
            code = present.get(library.name)
            if code == library.source:
                changes.append(Change(node.name, library.name, PRESENT))
                continue
            # The same name with other text was edited on the server: this version's text replaces it.
            await client.execute_command(
                "FUNCTION", "LOAD", *(("REPLACE",) if code is not None else ()), library.source, target_nodes=node
            )
            changes.append(Change(node.name, library.name, REPLACED if code is not None else LOADED))
        for name in sorted(set(present) - wanted_names):
            if prune:
                await client.execute_command("FUNCTION", "DELETE", name, target_nodes=node)
            changes.append(Change(node.name, name, PRUNED if prune else KEPT))
    except (RedisError, OSError) as error:
        changes.append(Change(node.name, "", FAILED, f"{type(error).__name__}: {error}"))
    return changes


async def migrate(settings: Settings, prune: bool = False) -> list[Change]:
    """Load every library into every primary the cluster has now; what each primary got, per library."""
    client = RedisCluster.from_url(
        settings.redis_url,
        socket_timeout=TIMEOUT_S,
        socket_connect_timeout=TIMEOUT_S,
        require_full_coverage=False,
        **connection_options(settings),
    )
    try:
        await client.initialize()
        covered = covered_slots(client)
        if covered < CLUSTER_SLOTS:  # being created, or a shard down: a primary could be missed
            raise RedisClusterException(
                f"the cluster serves {covered} of {CLUSTER_SLOTS} slots; run again once it serves them all"
            )
        wanted = functions.libraries()
        primaries = sorted(client.get_primaries(), key=lambda node: node.name)
        done = await asyncio.gather(*(_migrate_node(client, node, wanted, prune) for node in primaries))
        return [change for changes in done for change in changes]
    finally:
        await client.aclose()


def render(changes: list[Change]) -> str:
    lines = [
        f"{c.node:<22} {c.library or '-':<36} {c.outcome}" + (f": {c.error}" if c.error else "") for c in changes
    ]
    counts: dict[str, int] = {}
    for change in changes:
        counts[change.outcome] = counts.get(change.outcome, 0) + 1
    primaries = len({change.node for change in changes})
    summary = ", ".join(f"{outcome} {count}" for outcome, count in counts.items())
    return "\n".join([*lines, f"{primaries} primaries: {summary}"])


def add_arguments(cluster: argparse.ArgumentParser) -> None:
    """`cluster migrate` under the `cluster` command."""
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
    except (RedisError, RedisClusterException, OSError) as error:
        where = settings.redis_url.split("@")[-1]
        print(f"error: cannot migrate the cluster at {where}: {type(error).__name__}: {error}", file=sys.stderr)
        return 2
    print(json.dumps([asdict(c) for c in changes], indent=2) if args.json else render(changes))
    return 1 if not changes or any(change.outcome == FAILED for change in changes) else 0
