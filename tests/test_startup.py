"""A component started with a bad setting exits at once, saying which variable and what it takes."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from localdev.ports import free_ports

BAD_SETTINGS = {
    "profile_svc": ("PROFILEMESH_PARTITIONS", "0", "PROFILEMESH_PARTITIONS must be 1..1024, got 0"),
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
