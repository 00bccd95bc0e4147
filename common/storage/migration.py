"""The admin step of the functions (docs/functions.md): load this version's libraries into every primary, as
`profilemesh cluster migrate` (profilemesh_cli/migrate.py) and localdev do; a service never does.

Idempotent: a library already there with the same text is left alone. Replicas are never written to: they get
their primary's libraries by replication (and a replica promoted keeps them). Profilemesh libraries of other
versions are kept (old processes of a rolling upgrade still call theirs) unless `prune`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from redis.asyncio.cluster import ClusterNode, RedisCluster

from common.errors import ClusterUnavailable
from common.runtime.config import Settings
from common.storage import functions
from common.storage.connection import CLUSTER_SLOTS
from common.storage.errors import CLIENT_FAILURES, translated
from common.storage.internals import covered_slots
from common.storage.nodes import AsyncNode, async_operator_cluster
from common.storage.replies import text
from common.storage.topology import parse_cluster_nodes

TIMEOUT_S = 10.0
LOADED, PRESENT, REPLACED, PRUNED, KEPT, FAILED = (
    "loaded",
    "already present",
    "replaced",
    "pruned",
    "kept (another version; --prune removes it)",
    "failed",
)


Execute = Callable[..., Awaitable[Any]]  # runs one command on one node


@dataclass
class Change:
    node: str
    library: str
    outcome: str
    error: str = ""


async def _present(execute: Execute) -> dict[str, str]:
    """The profilemesh libraries on the node `execute` runs commands on: name -> code."""
    reply = await execute("FUNCTION", "LIST", "LIBRARYNAME", f"{functions.PREFIX}*", "WITHCODE")
    found = {}
    for entry in reply:
        fields = dict(zip(entry[::2], entry[1::2], strict=True)) if isinstance(entry, list) else entry
        if str(fields["library_name"]).startswith(functions.PREFIX):
            found[fields["library_name"]] = fields["library_code"]
    return found


async def _migrate_node(name: str, execute: Execute, wanted: Iterable[functions.Library], prune: bool) -> list[Change]:
    changes = []
    try:
        present = await _present(execute)
        wanted_names = set()
        for library in wanted:
            wanted_names.add(library.name)
            code = present.get(library.name)
            if code == library.source:
                changes.append(Change(name, library.name, PRESENT))
                continue
            # The same name with other text was edited on the server: this version's text replaces it.
            await execute("FUNCTION", "LOAD", *(("REPLACE",) if code is not None else ()), library.source)
            changes.append(Change(name, library.name, REPLACED if code is not None else LOADED))
        for other in sorted(set(present) - wanted_names):
            if prune:
                await execute("FUNCTION", "DELETE", other)
            changes.append(Change(name, other, PRUNED if prune else KEPT))
    except CLIENT_FAILURES as error:
        changes.append(Change(name, "", FAILED, f"{type(error).__name__}: {error}"))
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
        primaries = client.get_primaries()
        runs: dict[str, Execute] = {
            node.name: functools.partial(client.execute_command, target_nodes=node) for node in primaries
        }
        async with contextlib.AsyncExitStack() as stack:
            for address in await _primaries_without_slots(client, primaries[0], set(runs)):
                host, _, port = address.rpartition(":")
                node = await stack.enter_async_context(
                    AsyncNode.at(host, int(port), settings, TIMEOUT_S, decode_responses=True)
                )
                if await _is_primary(node.client.execute_command):
                    runs[address] = node.client.execute_command
            done = await asyncio.gather(*(_migrate_node(name, runs[name], wanted, prune) for name in sorted(runs)))
        return [change for changes in done for change in changes]
    finally:
        await client.aclose()


async def _is_primary(execute: Execute) -> bool:
    """Whether the node calls itself a primary: in a cluster just made, another node can still list a replica
    as a primary without slots, until the news that it replicates reaches it."""
    myself = [node for node in parse_cluster_nodes(text(await execute("CLUSTER", "NODES"))) if "myself" in node.flags]
    return bool(myself) and myself[0].is_primary


async def _primaries_without_slots(client: RedisCluster, seed: ClusterNode, known: set[str]) -> list[str]:
    """The addresses of primaries that serve no slot yet: a shard just added, which CLUSTER SLOTS (and so the
    client) does not list. Its functions must be there before the first slot moves to it."""
    reply = await client.execute_command("CLUSTER", "NODES", target_nodes=seed)
    return [
        node.address
        for node in parse_cluster_nodes(text(reply))
        if node.is_primary
        and not node.failing
        and "handshake" not in node.flags
        and not node.slot_ranges
        and node.address not in known
    ]
