"""Run the gateway: `python -m gateway`."""

from __future__ import annotations

import uvloop
from aiohttp import web

from common.errors import StartupError
from common.runtime import cancellation
from common.runtime.addresses import parse_listen
from common.runtime.command import parse_arguments
from common.runtime.config import Settings
from common.runtime.logs import setup_logging
from common.runtime.metrics import serve_metrics
from common.runtime.tracing import setup_tracing, shutdown_tracing
from gateway.app import build_app
from gateway.edge import server_limits


def serve() -> None:
    cancellation.install()  # before the loop starts: a wait_for must not lose a cancellation (gateway/sse.py)
    settings = Settings.from_env()
    setup_logging("gateway", settings.log_level, settings.log_format)
    setup_tracing("gateway")
    # On its own port: the public listener stays the API alone, and scrapes are neither counted nor shed.
    serve_metrics(settings.gateway_metrics_listen)
    host, port = parse_listen(settings.gateway_listen)
    # run_app handles SIGTERM and SIGINT: it stops accepting, lets in-flight requests finish, then exits.
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
    shutdown_tracing()


def main() -> None:
    """The `profilemesh-gateway` console script; only here does a start-up error end the process."""
    parse_arguments("profilemesh-gateway", "REST gateway")
    try:
        serve()
    except StartupError as error:
        raise SystemExit(f"gateway: {error}") from None


if __name__ == "__main__":
    main()
