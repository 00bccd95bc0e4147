"""Run the aggregator: `python -m aggregator_svc`. It serves gRPC health (and reflection) only."""

from __future__ import annotations

import asyncio

import grpc

from aggregator_svc.aggregator import Aggregator
from common.cluster import Cluster
from common.config import Settings
from common.logs import setup_logging
from common.server import serve


async def main(settings: Settings) -> None:
    cluster = Cluster(settings, extra_connections=settings.partitions)
    aggregator = Aggregator(cluster)

    def register(server: grpc.aio.Server) -> list[str]:
        return []

    await serve(settings.aggregator_listen, cluster, register, background=[aggregator.run])


if __name__ == "__main__":
    settings = Settings.from_env()
    setup_logging("aggregator_svc", settings.log_level)
    asyncio.run(main(settings))
