"""`profilemesh status`: components, cluster nodes and partitions, and whether anything is wrong."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from aggregator_svc.lag import SCRIPTS, node_figures, partition_figures
from common.errors import StorageError
from common.rpc import tls
from common.runtime.config import Settings
from common.storage import functions, keys
from common.storage.cluster import ClusterClient
from common.storage.errors import translated
from common.storage.nodes import AsyncNode, async_operator_cluster, key_slot
from common.storage.topology import NodeLine
from profilemesh_cli.endpoints import COMPONENTS, Endpoints, replicas

TIMEOUT_S = 1.5
UNREACHABLE = "UNREACHABLE"
LAG_ON_NODE = SCRIPTS / "lag_on_node.lua"

log = logging.getLogger(__name__)


@dataclass
class Report:
    components: list[dict[str, str]] = field(default_factory=list)
    nodes: list[dict[str, Any]] = field(default_factory=list)
    partitions: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def nothing_running(self) -> bool:
        return not self.nodes and all(c["status"] == UNREACHABLE for c in self.components)


async def _grpc_health(address: str, settings: Settings) -> str:
    async with tls.aio_channel(address, settings) as channel:
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT_S)
            return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))
        except grpc.aio.AioRpcError as error:
            return (
                UNREACHABLE
                if error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
                else error.code().name
            )


def _gateway_health(url: str) -> str:
    try:
        with urllib.request.urlopen(f"{url}/readyz", timeout=TIMEOUT_S) as reply:
            return "SERVING" if reply.status == 200 else f"HTTP {reply.status}"
    except urllib.error.HTTPError as error:
        return "NOT_READY" if error.code == 503 else f"HTTP {error.code}"
    except (urllib.error.URLError, OSError):
        return UNREACHABLE


async def _components(endpoints: Endpoints) -> list[dict[str, str]]:
    checks: list[tuple[str, str, Any]] = []
    for component in COMPONENTS[:3]:
        for address in replicas(endpoints.grpc_target(component)):
            checks.append((component, address, _grpc_health(address, endpoints.settings)))
    results = await asyncio.gather(*(check for _, _, check in checks))
    found = [{"component": c, "address": a, "status": s} for (c, a, _), s in zip(checks, results, strict=True)]
    gateway = endpoints.gateway_url
    found.append(
        {
            "component": "gateway",
            "address": gateway.removeprefix("http://"),
            "status": await asyncio.to_thread(_gateway_health, gateway),
        }
    )
    return found


async def _node_answers(address: str, settings: Settings) -> bool:
    host, _, port = address.rpartition(":")
    async with AsyncNode.at(host, int(port), settings, TIMEOUT_S) as node:
        return await node.ping()


async def _cluster(endpoints: Endpoints, report: Report) -> None:
    settings = endpoints.settings
    try:
        async with AsyncNode.seed(settings, TIMEOUT_S) as seed:
            lines = {line.id: line for line in await seed.cluster_nodes()}
    except StorageError as error:
        report.problems.append(f"the cluster does not answer at {settings.redis_url.split('@')[-1]}: {error}")
        return
    by_id = {node_id: _node_row(line) for node_id, line in lines.items()}
    await _check_nodes(by_id, settings, report)
    layout = await _layout(settings, report)
    holder = _holders(lines, by_id, layout)
    report.nodes = sorted(by_id.values(), key=lambda n: (n["role"] != "primary", n["address"]))
    healthy = {n["address"] for n in by_id.values() if n["state"] == "ok"}
    await _partitions(endpoints, holder, healthy, layout.generation, report)


async def _layout(settings: Settings, report: Report) -> keys.Layout:
    """The layout the cluster records (the settings' count before a first start, or when it can't be read)."""
    client = async_operator_cluster(settings, TIMEOUT_S, decode_responses=True)
    try:
        with translated():
            record = await client.get(keys.PARTITIONS_KEY)
        layout = keys.parse_layout(str(record)) if record is not None else keys.Layout(settings.partitions)
    except (StorageError, ValueError) as error:
        report.problems.append(f"the partition layout record can't be read: {error}")
        return keys.Layout(settings.partitions)
    finally:
        await client.aclose()
    if layout.resizing_to is not None:
        report.problems.append(
            f"a resize from {layout.partitions} to {layout.resizing_to.partitions} partitions is under way "
            "(`profilemesh cluster resize`)"
        )
    return layout._replace(resizing_to=None)


def _node_row(line: NodeLine) -> dict[str, Any]:
    """A node as CLUSTER NODES shows it: its address, role, state, and its primary's id if a replica."""
    role = "primary" if line.is_primary else "replica"
    state = "failed" if "fail" in line.flags else "suspected" if "fail?" in line.flags else "ok"
    return {
        "address": line.address,
        "role": role,
        "state": state,
        "primary_of": line.primary_id if role == "replica" else None,
        "partitions": [],
    }


async def _check_nodes(by_id: dict[str, dict[str, Any]], settings: Settings, report: Report) -> None:
    """Ask every node whether it answers (an ok one that does not is unreachable); primaries by address."""
    answers = await asyncio.gather(*(_node_answers(n["address"], settings) for n in by_id.values()))
    for node, answered in zip(by_id.values(), answers, strict=True):
        if not answered:
            node["state"] = "unreachable" if node["state"] == "ok" else node["state"]
        if node["state"] != "ok":
            report.problems.append(f"node {node['address']} ({node['role']}) is {node['state']}")
    for node in by_id.values():
        if node["primary_of"] in by_id:
            node["primary_of"] = by_id[node["primary_of"]]["address"]


def _holders(
    lines: dict[str, NodeLine], by_id: dict[str, dict[str, Any]], layout: keys.Layout
) -> dict[int, str | None]:
    """Each partition's primary (None: no primary serves its slot), noted in that primary's row too."""
    holder: dict[int, str | None] = {}
    for partition in range(layout.partitions):
        slot = key_slot(keys.tag(partition, layout.generation))
        owner = next((nid for nid, line in lines.items() if line.is_primary and line.serves(slot)), None)
        holder[partition] = by_id[owner]["address"] if owner else None
        if owner:
            by_id[owner]["partitions"].append(partition)
    return holder


async def _partitions(
    endpoints: Endpoints, holder: dict[int, str | None], healthy: set[str], generation: int, report: Report
) -> None:
    settings = endpoints.settings
    client = async_operator_cluster(settings, TIMEOUT_S)
    try:
        now_ms = int(time.time() * 1000)
        reachable = {p: primary for p, primary in holder.items() if primary is not None and primary in healthy}
        read = await figures_per_node(client, reachable, generation, settings.aggregator_group, now_ms)
        for partition, primary in holder.items():
            row: dict[str, Any] = {"partition": partition, "primary": primary}
            if partition not in reachable:
                report.problems.append(f"partition {partition} has no reachable primary")
            elif partition in read:
                row.update(read[partition])
            else:  # no call per node answered for it: read on its own
                try:
                    with translated():
                        stream = keys.events_key(partition, generation)
                        row.update(await partition_figures(client, stream, settings.aggregator_group, now_ms))
                except StorageError as error:
                    report.problems.append(f"partition {partition}: cannot read its stream: {error}")
            report.partitions.append(row)
    finally:
        await client.aclose()


async def figures_per_node(
    client: ClusterClient, holder: dict[int, str], generation: int, group: str, now_ms: int
) -> dict[int, dict[str, float]]:
    """The figures of every partition, one call of the aggregator's lag_on_node per primary (at 4,096 partitions,
    3 calls where reading each partition takes over 8,000 commands); the partitions of a primary whose call
    failed (its slot moved, the aggregator's library not loaded) are left out, for the caller to read one by one."""
    by_primary: dict[str, list[int]] = {}
    for partition, primary in holder.items():
        by_primary.setdefault(primary, []).append(partition)
    function = functions.function(LAG_ON_NODE)

    async def on_node(partitions: list[int]) -> dict[int, dict[str, float]]:
        streams = [keys.events_key(partition, generation) for partition in partitions]
        try:
            with translated():
                rows = await client.execute_command(function.command, function.name, 1, streams[0], group, *streams)
            return {p: node_figures(row, now_ms) for p, row in zip(partitions, rows, strict=True)}
        except (StorageError, TimeoutError, ValueError) as error:
            log.debug("lag_on_node failed, partitions read one by one: %r", error)
            return {}

    read: dict[int, dict[str, float]] = {}
    for figures in await asyncio.gather(*(on_node(partitions) for partitions in by_primary.values())):
        read.update(figures)
    return read


async def gather(endpoints: Endpoints) -> Report:
    report = Report()
    report.components = await _components(endpoints)
    await _cluster(endpoints, report)
    for component in report.components:
        if component["status"] != "SERVING":
            report.problems.append(f"{component['component']} at {component['address']} is {component['status']}")
    return report


def render(report: Report) -> str:
    lines = ["components:"]
    for c in report.components:
        lines.append(f"  {c['component']:<15} {c['address']:<22} {c['status']}")
    lines.append("cluster nodes:")
    for n in report.nodes:
        role = "primary" if n["role"] == "primary" else f"replica of {n['primary_of']}"
        held = f"  partitions {','.join(map(str, n['partitions']))}" if n["role"] == "primary" else ""
        lines.append(f"  {n['address']:<22} {role:<30} {n['state']}{held}")
    lines.append("partitions:")
    lines.append(
        f"  {'partition':>9} {'primary':<22} {'stream':>8} {'pending':>8} {'lag':>8} {'oldest undelivered':>19}"
    )
    for p in report.partitions:
        if "length" in p:
            lines.append(
                f"  {p['partition']:>9} {p['primary']:<22} {p['length']:>8} {p['pending']:>8} {p['lag']:>8}"
                f" {p['oldest_undelivered']:>18.1f}s"
            )
        else:
            lines.append(f"  {p['partition']:>9} {str(p['primary']):<22} {'?':>8} {'?':>8} {'?':>8} {'?':>19}")
    if report.problems:
        lines.append("problems:")
        lines += [f"  - {problem}" for problem in report.problems]
    lines.append("status: " + ("UNHEALTHY" if report.problems else "healthy"))
    return "\n".join(lines)


def as_json(report: Report) -> str:
    return json.dumps(
        {
            "healthy": not report.problems,
            "components": report.components,
            "nodes": report.nodes,
            "partitions": report.partitions,
            "problems": report.problems,
        },
        indent=2,
    )
