"""`make run`: the local cluster, the three services and the gateway, until Ctrl-C."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

from localdev.cluster import default_cluster
from localdev.system import System


def main() -> None:
    system = System(
        cluster=default_cluster(Path(".cluster")),
        profile_port=int(os.environ.get("PROFILEMESH_PROFILE_PORT", "50051")),
        reporting_port=int(os.environ.get("PROFILEMESH_REPORTING_PORT", "50052")),
        aggregator_port=int(os.environ.get("PROFILEMESH_AGGREGATOR_PORT", "50053")),
        gateway_port=int(os.environ.get("PROFILEMESH_GATEWAY_PORT", "8080")),
    )
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    # Ctrl-C, even when started from a shell that made background jobs ignore SIGINT.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        system.start(timeout_s=120)
        print(
            "\nprofilemesh is running:\n"
            f"  cluster        {system.cluster.url}  (nodes {system.cluster.startup_urls}, data in .cluster/)\n"
            f"  profile_svc    grpc 127.0.0.1:{system.profile_port}\n"
            f"  reporting_svc  grpc 127.0.0.1:{system.reporting_port}\n"
            f"  aggregator_svc grpc health 127.0.0.1:{system.aggregator_port}\n"
            f"  gateway        {system.gateway_url}  (try: curl {system.gateway_url}/reporting/profileStats/3)\n"
            "Ctrl-C stops everything.\n",
            flush=True,
        )
        while all(process.poll() is None for process in system.processes.values()):
            time.sleep(0.5)
        print("a service exited; stopping everything", file=sys.stderr)
    except KeyboardInterrupt:
        pass
    finally:
        print("stopping...", flush=True)
        system.stop()


if __name__ == "__main__":
    main()
