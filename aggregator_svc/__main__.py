"""Run the aggregator: `python -m aggregator_svc`. It serves gRPC health (and reflection) only."""

from __future__ import annotations

import grpc

from aggregator_svc.aggregator import Aggregator
from aggregator_svc.lag import collect_lag
from common.rpc.server import Service, service_main
from common.storage.cluster import Cluster


def build(server: grpc.aio.Server, cluster: Cluster) -> Service:
    aggregation = cluster.settings.aggregation()
    return Service(
        names=[],
        background=[
            Aggregator(cluster, aggregation).run,
            lambda: collect_lag(cluster, aggregation.group, aggregation.partitions),
        ],
    )


def main() -> None:
    """The `profilemesh-aggregator` console script."""
    service_main(
        "profilemesh-aggregator", "aggregator", "aggregator_svc", lambda settings: settings.aggregator_listen, build
    )


if __name__ == "__main__":
    main()
