"""One recorded run: a whole system, concurrent clients and a nemesis, inside the current network namespace.

    ip netns exec NS .venv/bin/python -m tests.jepsen.run --seed 1 --out DIR --duration-s 60

(tests/jepsen/harness.py makes the namespace and runs this.) It writes to DIR: history.jsonl (every
operation), faults.jsonl (every fault with its start, heal and healthy times), stats.json (each user's
read count and the operation totals after quiescence), summary.json, and the system's logs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

import grpc
from redis.crc import key_slot

from common.storage import keys as key_names
from localdev.cluster import LocalCluster
from localdev.ports import free_ports
from localdev.system import SERVICES, System
from profilemesh.reporting.v1 import reporting_pb2, reporting_pb2_grpc
from tests.jepsen import history
from tests.jepsen.clients import Client, GrpcClient, Recorder, RestClient, final_reads, summary_counts, worker
from tests.jepsen.nemesis import FAULTS, Nemesis, dump_faults, in_test_namespace

NODE_HOSTS = [f"127.0.0.{11 + i}" for i in range(6)]
SERVICE_HOST = "127.0.0.30"
ISOLATED_GID = 4719  # profile_svc-2 runs as this group: partitions cut it off from the isolated nodes
PARTITIONS = 16


def build_system(out: Path, durability: str, node_timeout_ms: int, read_check: str) -> System:
    service_ports = free_ports(4 + 2 + 2)
    cluster = LocalCluster(
        data_dir=out / "cluster",
        ports=[7000 + i for i in range(6)],
        bus_ports=[17000 + i for i in range(6)],
        node_timeout_ms=node_timeout_ms,
        hosts=NODE_HOSTS,
    )
    settings = {
        "PROFILEMESH_DURABILITY": durability,
        "PROFILEMESH_PARTITIONS": str(PARTITIONS),
        "PROFILEMESH_LOG_LEVEL": "WARNING",
        # Quick reclaims and stops, as in the suite (tests/conftest.py): the statistics settle sooner.
        "PROFILEMESH_AGGREGATOR_CLAIM_IDLE_MS": "2000",
        "PROFILEMESH_AGGREGATOR_MAINTENANCE_S": "1",
        "PROFILEMESH_SHUTDOWN_GRACE_S": "5",
        "PROFILEMESH_DRAIN_MS": "300",
        # Metrics are not looked at here; off, so that two replicas never ask for the same port.
        **{f"PROFILEMESH_{name.removesuffix('_svc').upper()}_METRICS_LISTEN": "off" for name in SERVICES},
    }
    if read_check:
        settings["PROFILEMESH_READ_CHECK"] = read_check
    return System(
        cluster=cluster,
        profile_ports=service_ports[4:6],
        reporting_ports=service_ports[6:8],
        aggregator_port=service_ports[0],
        gateway_port=service_ports[1],
        log_dir=out / "logs",
        settings=settings,
        host=SERVICE_HOST,
        groups={"profile_svc-2": ISOLATED_GID},
    )


def pick_users(cluster: LocalCluster, count: int) -> list[str]:
    """`count` users spread evenly over the shards, so that a fault on any primary meets some of them."""
    shards = [(node.slot_ranges, []) for node in cluster.cluster_nodes() if node.is_primary and node.slot_ranges]
    wanted = -(-count // len(shards))
    candidate = 0
    while sum(len(users) for _, users in shards) < count:
        user = f"user{candidate}"
        candidate += 1
        slot = key_slot(key_names.profile_key(user, PARTITIONS).encode())
        for ranges, users in shards:
            if any(low <= slot <= high for low, high in ranges) and len(users) < wanted:
                users.append(user)
    return sorted(user for _, users in shards for user in users)[:count]


def read_stats(system: System, users: list[str]) -> dict[str, object]:
    """Each user's read count and the totals, once they have stopped changing (the aggregator caught up)."""
    target = f"{system.host}:{system.reporting_port}"
    with grpc.insecure_channel(target) as channel:
        stub = reporting_pb2_grpc.ReportingServiceStub(channel)

        def snapshot() -> dict[str, object]:
            reads: dict[str, int | None] = {}
            for user in users:
                try:
                    reads[user] = stub.GetProfileStats(reporting_pb2.GetProfileStatsRequest(user=user), timeout=5).reads
                except grpc.RpcError as error:
                    if error.code() != grpc.StatusCode.NOT_FOUND:  # type: ignore[attr-defined]  # a call's error
                        raise
                    reads[user] = None
            totals = stub.GetOperationTotals(reporting_pb2.GetOperationTotalsRequest(), timeout=5)
            return {
                "reads": reads,
                "totals": {f: getattr(totals, f) for f in ("create", "read", "update", "delete")},
            }

        last: dict[str, object] = {}
        stable_since = time.monotonic()
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                now = snapshot()
            except grpc.RpcError:
                time.sleep(0.5)
                continue
            if now != last:
                last, stable_since = now, time.monotonic()
            elif time.monotonic() - stable_since > 3:
                return last
            time.sleep(0.5)
        return {**last, "unsettled": True}


async def workload(
    system: System,
    users: list[str],
    recorder: Recorder,
    seed: int,
    clients_per_kind: int,
    rate: float,
    stop: asyncio.Event,
) -> list[Client]:
    rng = random.Random(seed)
    clients: list[Client] = []
    for index in range(clients_per_kind):
        port = system.profile_ports[index % len(system.profile_ports)]
        clients.append(GrpcClient(f"{system.host}:{port}"))
        clients.append(RestClient(system.gateway_url))
    mean_pause = len(clients) / rate
    tasks = [
        asyncio.create_task(
            worker(recorder, client, users, random.Random(rng.random()), stop, lambda: rng.uniform(0, 2 * mean_pause))
        )
        for client in clients
    ]
    await asyncio.gather(*tasks)
    return clients


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--duration-s", type=float, default=60, help="how long faults go on (a cycle ends first)")
    parser.add_argument("--faults", default=",".join(FAULTS), help=f"comma-separated, cycled: {', '.join(FAULTS)}")
    parser.add_argument("--durability", default="replica", choices=("none", "local", "replica"))
    parser.add_argument("--read-check", default="", help="PROFILEMESH_READ_CHECK for profile_svc, if set")
    parser.add_argument("--node-timeout-ms", type=int, default=1000)
    parser.add_argument("--keys", type=int, default=6)
    parser.add_argument("--clients-per-kind", type=int, default=4, help="gRPC clients, and as many REST ones")
    parser.add_argument("--rate", type=float, default=60, help="operations per second, all clients together")
    parser.add_argument("--min-faults", type=int, default=0, help="go on past the duration until this many")
    args = parser.parse_args(argv)
    if not in_test_namespace():
        print("run this inside a network namespace of its own (tests/jepsen/harness.py does)", file=sys.stderr)
        return 2
    kinds = [kind.strip() for kind in args.faults.split(",") if kind.strip()]
    unknown = set(kinds) - set(FAULTS)
    if unknown:
        parser.error(f"unknown faults {sorted(unknown)}; known: {', '.join(FAULTS)}")
    # SIGTERM (the harness ending a run) unwinds through the finally below, which stops every process.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    out: Path = args.out.resolve()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    system = build_system(out, args.durability, args.node_timeout_ms, args.read_check)
    started_wall = time.time()
    try:
        system.start(120)
        users = pick_users(system.cluster, args.keys)
        recorder = Recorder()
        nemesis = Nemesis(
            system.cluster, recorder.now, ISOLATED_GID, random.Random(args.seed), args.node_timeout_ms / 1000
        )
        loop = asyncio.new_event_loop()
        stop = asyncio.Event()
        failure: list[BaseException] = []

        def faults() -> None:
            try:
                time.sleep(3)  # a quiet start: some history before the first fault
                index = 0
                while recorder.now() < args.duration_s or len(nemesis.faults) < args.min_faults:
                    fault = nemesis.run_one(kinds[index % len(kinds)])
                    print(
                        f"[jepsen {fault.start_s:7.1f} s] {fault.kind}: {fault.target}; {fault.note}; "
                        f"healthy after {fault.healthy_s - fault.start_s:.1f} s",
                        flush=True,
                    )
                    index += 1
                    time.sleep(2)  # quiet between faults
            except BaseException as error:  # noqa: BLE001  # reported below; the workload must stop either way
                failure.append(error)
            finally:
                nemesis.heal()
                loop.call_soon_threadsafe(stop.set)

        thread = threading.Thread(target=faults, name="nemesis", daemon=True)
        thread.start()
        clients = loop.run_until_complete(
            workload(system, users, recorder, args.seed, args.clients_per_kind, args.rate, stop)
        )
        thread.join()
        if failure:
            raise failure[0]
        system.cluster.wait_ready(120)
        system.wait_healthy(120)
        loop.run_until_complete(final_reads(recorder, clients, users))
        for client in clients:
            loop.run_until_complete(client.close())
        loop.close()
        stats = read_stats(system, users)
    finally:
        system.stop()
    ops = sorted(recorder.ops, key=lambda op: op.invoke_s)
    with (out / "history.jsonl").open("w") as file:
        history.dump(ops, file)
    dump_faults(nemesis.faults, out / "faults.jsonl")
    (out / "stats.json").write_text(json.dumps(stats, indent=1) + "\n")
    summary = {
        "seed": args.seed,
        "durability": args.durability,
        "read_check": args.read_check,
        "faults_cycled": kinds,
        "node_timeout_ms": args.node_timeout_ms,
        "users": users,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started_wall)),
        "duration_s": round(recorder.now(), 1),
        "faults": len(nemesis.faults),
        "faults_by_kind": {kind: sum(f.kind == kind for f in nemesis.faults) for kind in kinds},
        "unexpected_answers": recorder.unexpected[:50],
        **summary_counts(ops),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps({k: summary[k] for k in ("ops", "ok", "fail", "unknown", "faults", "duration_s")}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
