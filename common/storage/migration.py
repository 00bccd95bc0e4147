"""The admin step of the functions (docs/functions.md): load this version's libraries into every primary, as
`profilemesh cluster migrate` (profilemesh_cli/migrate.py) and localdev do; a service never does.

Idempotent: a library already there with the same text is left alone. Replicas are never written to: they get
their primary's libraries by replication (and a replica promoted keeps them). Profilemesh libraries of other
versions are kept (old processes of a rolling upgrade still call theirs) unless `prune`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass

from redis.asyncio.cluster import ClusterNode, RedisCluster

from common.errors import ClusterUnavailable
from common.runtime.config import Settings
from common.storage import functions
from common.storage.connection import CLUSTER_SLOTS
from common.storage.errors import CLIENT_FAILURES, translated
from common.storage.internals import covered_slots
from common.storage.nodes import async_operator_cluster

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


async def _present(client: RedisCluster, node: ClusterNode) -> dict[str, str]:
    """The profilemesh libraries on `node`: name -> code."""
    reply = await client.execute_command(
        "FUNCTION", "LIST", "LIBRARYNAME", f"{functions.PREFIX}*", "WITHCODE", target_nodes=node
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
    except CLIENT_FAILURES as error:
        changes.append(Change(node.name, "", FAILED, f"{type(error).__name__}: {error}"))
    return changes


async def migrate(settings: Settings, prune: bool = False) -> list[Change]:
    """Load every library into every primary the cluster has now; what each primary got, per library. A cluster
    that can't be reached, or does not serve every slot, raises a StorageError (nothing is loaded)."""
    with translated():
        return await _migrate(settings, prune)


async def _migrate(settings: Settings, prune: bool) -> list[Change]:
    client = async_operator_cluster(settings, TIMEOUT_S, decode_responses=True)
    try:
        await client.initialize()
        covered = covered_slots(client)
        if covered < CLUSTER_SLOTS:  # being created, or a shard down: a primary could be missed
            raise ClusterUnavailable(
                f"the cluster serves {covered} of {CLUSTER_SLOTS} slots; run again once it serves them all"
            )
        wanted = functions.libraries()
        primaries = sorted(client.get_primaries(), key=lambda node: node.name)
        done = await asyncio.gather(*(_migrate_node(client, node, wanted, prune) for node in primaries))
        return [change for changes in done for change in changes]
    finally:
        await client.aclose()
