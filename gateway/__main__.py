"""Run the gateway: `python -m gateway`."""

from __future__ import annotations

import uvloop
from aiohttp import web

from common.runtime.addresses import parse_listen
from common.runtime.config import Settings
from common.runtime.startup import run_component
from gateway.app import build_app
from gateway.edge import server_limits


def serve(settings: Settings) -> None:
    """Serve the REST API until SIGTERM or SIGINT, which aiohttp's run_app handles: it stops accepting, lets
    in-flight requests finish (streams end: gateway/sse.py), then exits."""
    host, port = parse_listen(settings.gateway_listen)
    web.run_app(
        build_app(settings),
        host=host,
        port=port,
        print=None,
        shutdown_timeout=settings.shutdown_grace_s,
        access_log=None,
        loop=uvloop.new_event_loop(),
        **server_limits(settings),
    )


def main() -> None:
    """The `profilemesh-gateway` console script: the components' one start-up, then `serve`."""
    run_component("profilemesh-gateway", "REST gateway", "gateway", serve)


if __name__ == "__main__":
    main()
