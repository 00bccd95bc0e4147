"""The one start-up of every component (the services and the gateway): arguments, settings, logs, traces, metrics."""

from __future__ import annotations

from collections.abc import Callable

from common.errors import StartupError
from common.runtime import cancellation
from common.runtime.command import parse_arguments
from common.runtime.config import Settings
from common.runtime.logs import setup_logging
from common.runtime.metrics import serve_metrics
from common.runtime.tracing import setup_tracing, shutdown_tracing


def run_component(program: str, component: str, process: str, run: Callable[[Settings], None]) -> None:
    """A component's console script: --help, then its settings, logging, tracing and metrics, then `run`, which
    serves until SIGTERM or SIGINT and drains. Only here does a start-up error end the process, with `process`
    (profile_svc, ..., gateway) as the first word of the message.

    Metrics get a port of their own (Settings.metrics_listen): the public listener stays the API alone, and
    scrapes are neither counted nor shed.
    """
    parse_arguments(program, component)
    try:
        # Before any loop starts: a send or a wait_for must not lose a cancellation (common/runtime/cancellation.py).
        cancellation.install()
        settings = Settings.from_env()
        setup_logging(process, settings.log_level, settings.log_format)
        setup_tracing(process)
        serve_metrics(settings.metrics_listen(process))
        try:
            run(settings)
        finally:
            shutdown_tracing()
    except StartupError as error:
        raise SystemExit(f"{process}: {error}") from None
