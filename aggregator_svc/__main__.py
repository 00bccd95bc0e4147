"""Run the aggregator: `python -m aggregator_svc`. It serves gRPC health (and reflection) only."""

from __future__ import annotations

import grpc

from aggregator_svc.aggregator import Aggregator
from aggregator_svc.lag import collect_lag
from common.cluster import Cluster
from common.command import parse_arguments
from common.config import StartupError
from common.server import Service, run_service


def build(server: grpc.aio.Server, cluster: Cluster) -> Service:
    return Service(
        names=[], background=[Aggregator(cluster).run, lambda: collect_lag(cluster, cluster.settings.aggregator_group)]
    )


def main() -> None:
    """The `profilemesh-aggregator` console script; only here does a start-up error end the process."""
    parse_arguments("profilemesh-aggregator", "aggregator")
    try:
        run_service("aggregator_svc", lambda settings: settings.aggregator_listen, build)
    except StartupError as error:
        raise SystemExit(f"aggregator_svc: {error}") from None


if __name__ == "__main__":
    main()
