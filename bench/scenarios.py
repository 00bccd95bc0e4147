"""The request scenarios, each run at every concurrency: who is loaded, by which generator."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from bench.pyload import run_pyload
from bench.results import LoadResult
from bench.sizes import Scale
from bench.wrk_runner import run_wrk

PROFILEMESH_REST = "profilemesh (REST via gateway)"
BASELINE_REST = "baseline (Flask + gunicorn)"
PROFILEMESH_GRPC = "profilemesh (direct gRPC)"


@dataclass(frozen=True)
class Scenario:
    name: str
    system: str
    tool: str  # "wrk", "grpc" (bench.pyload) or "script" (bench.pyload)
    target: str  # "gateway", "baseline", "profile_svc" or "cluster"
    wrk_script: str = "reads.lua"


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("a REST reads", PROFILEMESH_REST, "wrk", "gateway"),
    Scenario("b REST reads", BASELINE_REST, "wrk", "baseline"),
    Scenario("c gRPC GetProfile", PROFILEMESH_GRPC, "grpc", "profile_svc"),
    Scenario("d cluster script (floor)", "get_profile.lua via redis.asyncio", "script", "cluster"),
    Scenario("e REST mix", PROFILEMESH_REST, "wrk", "gateway", "mix.lua"),
    Scenario("e REST mix", BASELINE_REST, "wrk", "baseline", "mix.lua"),
    Scenario("f REST creates", PROFILEMESH_REST, "wrk", "gateway", "creates.lua"),
    Scenario("f REST creates", BASELINE_REST, "wrk", "baseline", "creates.lua"),
)


@dataclass(frozen=True)
class Targets:
    """Where each scenario's target listens, and which preloaded users it reads."""

    gateway_url: str
    baseline_url: str
    profile_address: str  # host:port of profile_svc
    cluster_url: str
    user_prefix: str
    users: int
    partitions: int


def run_scenario(
    scenario: Scenario,
    concurrency: int,
    targets: Targets,
    scale: Scale,
    run_id: str,
    on_start: Callable[[], object] | None = None,
) -> LoadResult:
    """One run of `scale.load_s` seconds; blocks until it ends. `on_start` runs as measuring begins."""
    if scenario.tool == "wrk":
        if on_start is not None:
            on_start()
        url = targets.gateway_url if scenario.target == "gateway" else targets.baseline_url
        args = [targets.user_prefix, str(targets.users)]
        if scenario.wrk_script in ("mix.lua", "creates.lua"):  # new users, named after the run
            args.append(f"{scenario.wrk_script.removesuffix('.lua')}{run_id}c{concurrency}")
        return run_wrk(scenario.name, scenario.system, url, scenario.wrk_script, args, concurrency, scale.load_s)
    target = targets.profile_address if scenario.tool == "grpc" else targets.cluster_url
    return run_pyload(
        scenario.name,
        scenario.system,
        scenario.tool,
        target,
        targets.user_prefix,
        targets.users,
        concurrency,
        scale.load_s,
        scale.warmup_s,
        targets.partitions,
        scale.grpc_processes,
        on_start,
    )
