"""A whole system on free ports for tests in other languages: `python -m localdev.serve [--replicas N]`.

It prints one JSON line (the targets and ports) once everything is healthy, then obeys one command per
line on stdin, answering each with a JSON line: `stop <process> [SIGTERM|SIGKILL]`, `start <service> <index>`
(a replica of profile_svc or reporting_svc, waited for until SERVING). At end of input (the test is done, or
died) it stops everything it started. clients/typescript's tests drive it.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
from pathlib import Path

from localdev.system import System, on_free_ports
from localdev.waiting import poll_until

SETTINGS = {
    "PROFILEMESH_PARTITIONS": "16",
    "PROFILEMESH_DRAIN_MS": "300",
    "PROFILEMESH_SHUTDOWN_GRACE_S": "5",
    "PROFILEMESH_STREAM_HEARTBEAT_S": "1",
    "PROFILEMESH_AGGREGATOR_MAINTENANCE_S": "1",
}


def _targets(system: System) -> dict[str, object]:
    """The one JSON line printed once everything is healthy: where a test finds the system."""
    return {
        "profileTarget": "ipv4:" + ",".join(f"127.0.0.1:{p}" for p in system.profile_ports),
        "reportingTarget": "ipv4:" + ",".join(f"127.0.0.1:{p}" for p in system.reporting_ports),
        "profilePorts": system.profile_ports,
        "reportingPorts": system.reporting_ports,
        "gatewayUrl": system.gateway_url,
        "logs": str(system.log_dir),
    }


def _obey(system: System, line: str) -> dict[str, object]:
    """Carry out one command line (`stop ...` or `start ...`); the JSON reply."""
    words = line.split()
    ports = {"profile": system.profile_ports, "reporting": system.reporting_ports}
    try:
        if words[:1] == ["stop"]:
            sig = signal.SIGKILL if words[2:3] == ["SIGKILL"] else signal.SIGTERM
            return {"ok": True, "code": system.stop_process(words[1], sig)}
        if words[:1] == ["start"]:
            service, index = words[1], int(words[2])
            system.start_replica(service, index)
            port = ports[service.removesuffix("_svc")][index]
            poll_until(lambda: system.grpc_status(port) == "SERVING", 30, f"{service} {index}", 0.1)
            return {"ok": True}
        return {"ok": False, "error": f"unknown command {line.strip()!r}"}
    except (IndexError, KeyError, ValueError, TimeoutError) as error:
        return {"ok": False, "error": str(error)}


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m localdev.serve", description=__doc__)
    parser.add_argument("--replicas", type=int, default=2, help="replicas of profile_svc and reporting_svc")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="profilemesh-serve-") as directory:
        system = on_free_ports(Path(directory), SETTINGS, replicas=args.replicas)
        try:
            system.start()
            print(json.dumps(_targets(system)), flush=True)
            for line in sys.stdin:
                print(json.dumps(_obey(system, line)), flush=True)
        finally:
            system.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
