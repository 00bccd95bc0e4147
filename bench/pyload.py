"""A Python load generator for what wrk can't drive: gRPC GetProfile and the bare cluster script.

Each process runs `concurrency` asyncio workers in closed loops over a few connections. The
parent starts them, waits until every one has connected and warmed up, then says GO on stdin,
so all processes measure the same window. Each reports latencies and its own CPU seconds.

Child: `python -m bench.pyload {grpc,script} TARGET PREFIX COUNT CONCURRENCY DURATION_S WARMUP_S PARTITIONS`
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from bench.results import LoadResult, percentile
from common.rpc import tls
from common.storage import functions

MAX_CONNECTIONS = 4  # per process; more connections than this buy nothing on two cores
GET_PROFILE_SCRIPT = Path(__file__).resolve().parent.parent / "profile_svc" / "scripts" / "get_profile.lua"

Call = Callable[[int, int], Awaitable[None]]  # (worker index, user index)


async def _grpc_calls(target: str, users: list[str], concurrency: int) -> tuple[Call, Callable[[], Awaitable[None]]]:
    from common.runtime.config import Settings
    from profilemesh.profile.v1 import profile_pb2, profile_pb2_grpc

    settings = Settings.from_env()  # plaintext, or mutual TLS when PROFILEMESH_GRPC_* say so
    # A local subchannel pool gives each channel its own TCP connection.
    channels = [
        tls.aio_channel(target, settings, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(min(concurrency, MAX_CONNECTIONS))
    ]
    stubs = [profile_pb2_grpc.ProfileServiceStub(channel) for channel in channels]
    requests = [profile_pb2.GetProfileRequest(user=user) for user in users]

    async def call(worker: int, user: int) -> None:
        await stubs[worker % len(stubs)].GetProfile(requests[user], timeout=5)

    async def close() -> None:
        await asyncio.gather(*(channel.close() for channel in channels))

    return call, close


async def _script_calls(url: str, users: list[str], partitions: int) -> tuple[Call, Callable[[], Awaitable[None]]]:
    from redis.asyncio.cluster import RedisCluster

    from profile_svc.profiles import script_keys

    client = RedisCluster.from_url(url)
    await client.initialize()
    function = functions.function(GET_PROFILE_SCRIPT)  # loaded by the system's start (profilemesh cluster migrate)
    arguments = [(script_keys(u, partitions), [u]) for u in users]

    async def call(worker: int, user: int) -> None:
        script_keys, args = arguments[user]
        node = client.get_node_from_key(script_keys[0])
        reply = await client.execute_command(
            function.command, function.name, len(script_keys), *script_keys, *args, target_nodes=node
        )
        if reply is None:
            raise LookupError(users[user])

    return call, client.aclose


async def _loop(call: Call, workers: int, users: int, seconds: float, latencies: list[int] | None) -> int:
    """Closed loops until `seconds` pass; returns the number of failed calls."""
    errors = 0
    end = time.perf_counter() + seconds

    async def worker(index: int) -> None:
        nonlocal errors
        pick = random.Random(index).randrange
        while time.perf_counter() < end:
            started = time.perf_counter_ns()
            try:
                await call(index, pick(users))
            except Exception:  # any failure is an error of the system under test; count it
                errors += 1
            if latencies is not None:
                latencies.append(time.perf_counter_ns() - started)

    await asyncio.gather(*(worker(i) for i in range(workers)))
    return errors


async def _child(
    kind: str,
    target: str,
    prefix: str,
    count: int,
    concurrency: int,
    duration_s: float,
    warmup_s: float,
    partitions: int,
) -> dict:
    users = [f"{prefix}{i}" for i in range(count)]
    if kind == "grpc":
        call, close = await _grpc_calls(target, users, concurrency)
    else:
        call, close = await _script_calls(target, users, partitions)
    try:
        await _loop(call, concurrency, count, warmup_s, None)
        print("READY", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        latencies: list[int] = []
        cpu, wall = time.process_time(), time.perf_counter()
        errors = await _loop(call, concurrency, count, duration_s, latencies)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    finally:
        await close()
    return {"latencies_ns": latencies, "errors": errors, "cpu_s": cpu, "wall_s": wall}


def run_pyload(
    scenario: str,
    system: str,
    kind: str,
    target: str,
    prefix: str,
    count: int,
    concurrency: int,
    duration_s: float,
    warmup_s: float,
    partitions: int,
    processes: int = 1,
    on_start: Callable[[], object] | None = None,
    env: dict[str, str] | None = None,
) -> LoadResult:
    """Run `processes` generator processes sharing `concurrency` workers; blocks until they end.

    `on_start` runs when every process has warmed up, just before the measured window opens.
    """
    processes = max(1, min(processes, concurrency))
    shares = [concurrency // processes + (i < concurrency % processes) for i in range(processes)]
    children = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.pyload",
                kind,
                prefix,
                str(count),
                str(share),
                str(duration_s),
                str(warmup_s),
                str(partitions),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            # The target may be a cluster URL with credentials: the environment, not the command line.
            # env: e.g. PROFILEMESH_GRPC_* for mutual TLS (common/rpc/tls.py).
            env={**os.environ, **(env or {}), "PYLOAD_TARGET": target},
        )
        for share in shares
    ]
    try:
        for child in children:
            if child.stdout.readline().strip() != "READY":  # type: ignore[union-attr]
                raise RuntimeError(f"load generator {kind} failed to start (exit {child.wait()})")
        if on_start is not None:
            on_start()
        for child in children:
            child.stdin.write("GO\n")  # type: ignore[union-attr]
            child.stdin.flush()  # type: ignore[union-attr]
        outputs = [child.stdout.read() for child in children]  # type: ignore[union-attr]
        if not all(outputs):
            raise RuntimeError(
                f"load generator {kind} died while measuring (exit codes {[c.wait() for c in children]})"
            )
        reports = [json.loads(output) for output in outputs]
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
            child.wait()
    latencies = sorted(ns for report in reports for ns in report["latencies_ns"])
    wall = max(report["wall_s"] for report in reports)
    return LoadResult(
        scenario=scenario,
        system=system,
        concurrency=concurrency,
        requests=len(latencies),
        duration_s=wall,
        p50_ms=percentile(latencies, 0.50) / 1e6,
        p99_ms=percentile(latencies, 0.99) / 1e6,
        p999_ms=percentile(latencies, 0.999) / 1e6,
        errors=sum(report["errors"] for report in reports),
        generator_cpu=sum(report["cpu_s"] for report in reports) / wall,
        generator_cores=processes,
    )


if __name__ == "__main__":
    kind, prefix, count, concurrency, duration_s, warmup_s, partitions = sys.argv[1:8]
    target = os.environ["PYLOAD_TARGET"]
    result = asyncio.run(
        _child(kind, target, prefix, int(count), int(concurrency), float(duration_s), float(warmup_s), int(partitions))
    )
    print(json.dumps(result), flush=True)
