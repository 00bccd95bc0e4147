"""Shutdown never hangs: every component, started and stopped with SIGTERM cycle after cycle under load, exits 0
within its shutdown budget (PROFILEMESH_DRAIN_MS + PROFILEMESH_SHUTDOWN_GRACE_S, plus the interpreter's exit).

Only the components cycle; the cluster (and the suite's own services) stay up, so a cycle costs the start of
six processes. Each cycle starts a profile_svc, a reporting_svc, three aggregator replicas and a gateway that
talks to those two; unary calls through the gateway and straight to the services, an SSE stream and a gRPC
stream are in flight when SIGTERM reaches all six at once, at a moment that varies from cycle to cycle.

CI runs PROFILEMESH_SHUTDOWN_CYCLES (default 8, about a minute: 24 aggregator stops; without the fix in
common/runtime/cancellation.py, 4 of the first 24 hung); `make verify-shutdown` runs 200.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import grpc
import pytest

from localdev.ports import free_ports
from localdev.system import System
from localdev.waiting import answers_ok
from profilemesh.profile.v1 import profile_pb2, profile_pb2_grpc
from profilemesh.reporting.v1 import reporting_pb2, reporting_pb2_grpc
from tests.conftest import TEST_SETTINGS

CYCLES = int(os.environ.get("PROFILEMESH_SHUTDOWN_CYCLES", "8"))
AGGREGATORS = 3
# After serve() says "stopped", the interpreter still has to exit (gRPC's threads, the loop's executor).
EXIT_MARGIN_S = 3.0
BUDGET_S = int(TEST_SETTINGS["PROFILEMESH_DRAIN_MS"]) / 1000 + int(TEST_SETTINGS["PROFILEMESH_SHUTDOWN_GRACE_S"])
EXIT_WITHIN_S = BUDGET_S + EXIT_MARGIN_S
CONCURRENCY = 8


@dataclass
class Component:
    """One process slot, on the same ports every cycle (restarting on a port just left is part of the test)."""

    name: str
    module: str
    port: int
    env: dict[str, str]


@dataclass
class Figures:
    exit_s: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    slowest: dict[str, tuple[float, str]] = field(default_factory=dict)  # per process: its slowest stop, its log
    calls_ok: int = 0
    failures: list[str] = field(default_factory=list)


def _components(system: System) -> list[Component]:
    ports = iter(free_ports(2 * (4 + AGGREGATORS)))
    profile, reporting, gateway = next(ports), next(ports), next(ports)
    components = [
        Component("cycled-profile", "profile_svc", profile, {"PROFILEMESH_PROFILE_LISTEN": f"127.0.0.1:{profile}"}),
        Component(
            "cycled-reporting", "reporting_svc", reporting, {"PROFILEMESH_REPORTING_LISTEN": f"127.0.0.1:{reporting}"}
        ),
        Component(
            "cycled-gateway",
            "gateway",
            gateway,
            {
                "PROFILEMESH_GATEWAY_LISTEN": f"127.0.0.1:{gateway}",
                "PROFILEMESH_PROFILE_TARGET": f"ipv4:127.0.0.1:{profile}",
                "PROFILEMESH_REPORTING_TARGET": f"ipv4:127.0.0.1:{reporting}",
            },
        ),
    ]
    for index in range(AGGREGATORS):
        port = next(ports)
        components.append(
            Component(
                f"cycled-aggregator-{index + 1}",
                "aggregator_svc",
                port,
                {
                    "PROFILEMESH_AGGREGATOR_LISTEN": f"127.0.0.1:{port}",
                    # The same consumers every cycle: a replica that comes back takes up its own name.
                    "PROFILEMESH_AGGREGATOR_CONSUMER": f"cycled-{index + 1}",
                },
            )
        )
    for component in components:  # its own metrics port (start_process sets the variable from it)
        system.metrics_ports[component.name] = next(ports)
    return components


def _ready(system: System, component: Component) -> bool:
    if component.module == "gateway":
        return answers_ok(f"http://127.0.0.1:{component.port}/readyz")
    return system.grpc_status(component.port) == "SERVING"


def _start(system: System, components: list[Component]) -> dict[str, subprocess.Popen]:
    started = {c.name: system.start_process(c.name, c.module, **c.env) for c in components}
    waiting = list(components)
    deadline = time.monotonic() + 60
    while waiting:
        exited = {c.name: started[c.name].returncode for c in waiting if started[c.name].poll() is not None}
        assert not exited, f"exited before becoming ready: {exited}"
        assert time.monotonic() < deadline, f"not ready after 60 s: {[c.name for c in waiting]}"
        waiting = [c for c in waiting if not _ready(system, c)]
        time.sleep(0.1)
    return started


async def _load(components: dict[str, Component], users: list[str], figures: Figures) -> None:
    """Calls of every kind, on every cycled component, until cancelled; failures once SIGTERM is out are expected."""
    profile = components["cycled-profile"].port
    reporting = components["cycled-reporting"].port
    gateway = f"http://127.0.0.1:{components['cycled-gateway'].port}"
    rng = random.Random(len(users))
    async with (
        grpc.aio.insecure_channel(f"127.0.0.1:{profile}") as profile_channel,
        grpc.aio.insecure_channel(f"127.0.0.1:{reporting}") as reporting_channel,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http,
    ):
        profiles = profile_pb2_grpc.ProfileServiceStub(profile_channel)
        reports = reporting_pb2_grpc.ReportingServiceStub(reporting_channel)

        async def one_call(n: int) -> None:
            user = rng.choice(users)
            match n % 5:
                case 0 | 4:  # reads are most of the events the aggregators apply
                    await profiles.GetProfile(profile_pb2.GetProfileRequest(user=user), timeout=5)
                case 1:
                    request = profile_pb2.UpdateProfileRequest(user=user, fields={"n": str(n)})
                    await profiles.UpdateProfile(request, timeout=5)
                case 2:
                    async with http.get(f"{gateway}/profile/{user}") as reply:
                        await reply.read()
                case _:
                    await reports.GetTopProfiles(reporting_pb2.GetTopProfilesRequest(limit=5), timeout=5)

        async def caller(worker: int) -> None:
            for n in itertools.count(worker, CONCURRENCY):
                try:
                    await one_call(n)
                    figures.calls_ok += 1
                except (grpc.aio.AioRpcError, aiohttp.ClientError, TimeoutError):
                    await asyncio.sleep(0.05)  # the component is going away

        async def sse_stream() -> None:
            while True:
                try:
                    async with http.get(f"{gateway}/reporting/profileStats/5/stream") as reply:
                        async for _ in reply.content:
                            pass
                except (aiohttp.ClientError, TimeoutError):
                    pass
                await asyncio.sleep(0.05)

        async def grpc_stream() -> None:
            while True:
                try:
                    request = profile_pb2.WatchProfileEventsRequest(users=users)
                    async for _ in profiles.WatchProfileEvents(request):
                        pass
                except grpc.aio.AioRpcError:
                    pass
                await asyncio.sleep(0.05)

        await asyncio.gather(*(caller(w) for w in range(CONCURRENCY)), sse_stream(), grpc_stream())


def _stack_dump(pid: int) -> str:
    """The Python stacks of a process that would not exit (py-spy, from the venv, when it is there)."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    try:
        return subprocess.run([spy, "dump", "--pid", str(pid)], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"(no stack dump: {error!r})"


def _read_from(path: Path, offset: int) -> str:
    """What a process logged in this cycle (its log file gathers every cycle's)."""
    with open(path, "rb") as log:
        log.seek(offset)
        return log.read().decode(errors="replace")


async def _cycle(
    system: System, components: list[Component], started: dict[str, subprocess.Popen], users: list[str], pause_s: float
) -> Figures:
    figures = Figures()
    logs = {name: system.log_dir / f"{name}.log" for name in started} if system.log_dir else {}
    log_from = {name: path.stat().st_size if path.exists() else 0 for name, path in logs.items()}
    load = asyncio.create_task(_load({c.name: c for c in components}, users, figures))
    await asyncio.sleep(pause_s)
    signalled = time.monotonic()
    for process in started.values():
        process.send_signal(signal.SIGTERM)
    running = dict(started)
    while running and time.monotonic() - signalled < EXIT_WITHIN_S + 5:
        for name, process in list(running.items()):
            if process.poll() is not None:
                figures.exit_s[name].append(time.monotonic() - signalled)
                del running[name]
        await asyncio.sleep(0.02)
    load.cancel()
    await asyncio.gather(load, return_exceptions=True)
    for name, process in running.items():  # hung: what it was doing, then SIGKILL
        dump = await asyncio.to_thread(_stack_dump, process.pid)
        figures.failures.append(f"{name} still running {EXIT_WITHIN_S + 5:.0f} s after SIGTERM:\n{dump}")
        figures.exit_s[name].append(float("inf"))
        process.kill()
        process.wait()
    for name, process in started.items():
        system.processes.pop(name, None)
        exit_s = figures.exit_s[name][-1]
        if name in logs:
            figures.slowest[name] = (exit_s, _read_from(logs[name], log_from[name]))
        if process.returncode != 0 and name not in running:
            log = _read_from(logs[name], log_from[name]) if name in logs else ""
            figures.failures.append(f"{name} exited {process.returncode} after {exit_s:.1f} s; its log:\n{log[-6000:]}")
        elif exit_s > EXIT_WITHIN_S:
            figures.failures.append(f"{name} exited {exit_s:.1f} s after SIGTERM (budget {EXIT_WITHIN_S:.1f} s)")
    return figures


@pytest.mark.timeout(120 + 40 * CYCLES)
def test_every_component_exits_within_its_grace_period_cycle_after_cycle(system: System, unique: str) -> None:
    components = _components(system)
    users = [f"{unique}-{i}" for i in range(20)]
    with grpc.insecure_channel(f"127.0.0.1:{system.profile_port}") as channel:
        stub = profile_pb2_grpc.ProfileServiceStub(channel)
        for user in users:
            stub.CreateProfile(profile_pb2.CreateProfileRequest(user=user, fields={"n": "0"}), timeout=10)
    rng = random.Random(19)
    total = Figures()
    began = time.monotonic()
    try:
        for cycle in range(CYCLES):
            started = _start(system, components)
            figures = asyncio.run(_cycle(system, components, started, users, pause_s=rng.uniform(0.3, 1.5)))
            total.calls_ok += figures.calls_ok
            total.failures += [f"cycle {cycle + 1}: {failure}" for failure in figures.failures]
            for name, times in figures.exit_s.items():
                total.exit_s[name] += times
            for name, (exit_s, log) in figures.slowest.items():
                if exit_s > total.slowest.get(name, (0.0, ""))[0]:
                    total.slowest[name] = (exit_s, f"cycle {cycle + 1}:\n{log}")
            if len(total.failures) >= 3:
                break
    finally:
        for component in components:
            system.stop_process(component.name, signal.SIGKILL)
            system.metrics_ports.pop(component.name, None)
    elapsed = time.monotonic() - began
    cycles = max(len(times) for times in total.exit_s.values())
    print(f"\n{cycles} cycles in {elapsed:.0f} s ({elapsed / cycles:.1f} s a cycle), {total.calls_ok} calls served;")
    print(f"exit after SIGTERM (budget {EXIT_WITHIN_S:.1f} s):")
    for name, times in sorted(total.exit_s.items()):
        print(f"  {name:20} p50 {statistics.median(times):5.2f} s  max {max(times):5.2f} s  ({len(times)} stops)")
    for name, (exit_s, log) in sorted(total.slowest.items()):
        if exit_s > BUDGET_S / 2:  # it used much of its grace: what it logged says why
            print(f"{name}'s slowest stop, {exit_s:.2f} s, in its log of {log[-4000:]}")
    assert not total.failures, "\n\n".join(total.failures)
    assert total.calls_ok >= 10 * cycles, "too little load to call it under load"
