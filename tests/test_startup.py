"""A component started with a bad setting exits at once, saying which variable and what it takes; a service started
against a cluster without its function library exits too, naming the command that loads it."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest

from common.storage import functions
from localdev.ports import free_ports
from localdev.system import System
from profilemesh_cli import migrate

BAD_SETTINGS = {
    "profile_svc": ("PROFILEMESH_PARTITIONS", "0", "PROFILEMESH_PARTITIONS must be 1..4096, got 0"),
    "reporting_svc": ("PROFILEMESH_WATCH_INTERVAL_MS", "soon", "PROFILEMESH_WATCH_INTERVAL_MS must be an integer"),
    "aggregator_svc": ("PROFILEMESH_LOG_FORMAT", "xml", "PROFILEMESH_LOG_FORMAT must be one of json, text"),
    "gateway": ("PROFILEMESH_DURABILITY", "sometimes", "PROFILEMESH_DURABILITY must be one of none, local, replica"),
}


@pytest.mark.parametrize("component", BAD_SETTINGS)
def test_a_bad_setting_stops_the_component_with_its_name(component: str) -> None:
    variable, value, says = BAD_SETTINGS[component]
    # Free ports, so that nothing a component might start before the check could collide with anything.
    ports = free_ports(2)
    env = {
        **os.environ,
        "PROFILEMESH_REDIS_URL": f"redis://127.0.0.1:{ports[0]}",
        "PROFILEMESH_GATEWAY_LISTEN": f"127.0.0.1:{ports[1]}",
        "PROFILEMESH_GATEWAY_METRICS_LISTEN": "off",
        variable: value,
    }
    ended = subprocess.run(
        [sys.executable, "-m", component], env=env, capture_output=True, text=True, timeout=30, check=False
    )
    assert ended.returncode == 1
    assert ended.stderr.strip().startswith(f"{component}: {says}"), ended.stderr
    assert "Traceback" not in ended.stderr + ended.stdout


def _start_profile_svc(system: System) -> subprocess.CompletedProcess[str]:
    """A second profile_svc against `system`'s cluster, on ports of its own; what it printed when it ended."""
    port = free_ports(1)[0]
    env = system.env(
        **system.cluster.user_env("profile_svc"),
        PROFILEMESH_PROFILE_LISTEN=f"127.0.0.1:{port}",
        PROFILEMESH_PROFILE_METRICS_LISTEN="off",
    )
    return subprocess.run(
        [sys.executable, "-m", "profile_svc"], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def test_a_service_refuses_to_start_without_its_function_library(fresh_system: System) -> None:
    """Missing on one primary, then only another version's there: it exits, naming the command to run."""
    library = functions.library("profile")
    primary = next(i for i in range(6) if fresh_system.cluster.node(i).info("replication")["role"] == "master")
    node = fresh_system.cluster.node(primary)
    node.function_delete(library.name)
    try:
        for state in ("missing", "another version"):
            if state == "another version":
                node.function_load(library.source.replace(library.version, "0" * functions.VERSION_CHARS))
            ended = _start_profile_svc(fresh_system)
            assert ended.returncode == 1, (state, ended.stderr[-2000:])
            last = ended.stderr.strip().splitlines()[-1]
            assert last.startswith("profile_svc: the cluster's primary ") and library.name in last, (state, last)
            assert "`profilemesh cluster migrate`" in last, last
            assert "Traceback" not in ended.stderr + ended.stdout
    finally:
        asyncio.run(migrate.migrate(fresh_system.client_settings(), prune=True))
    assert {change.library for change in asyncio.run(migrate.migrate(fresh_system.client_settings()))} == {
        lib.name for lib in functions.libraries()
    }
