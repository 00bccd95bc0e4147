"""One log format for every process: JSON lines for machines, plain text for a person at a terminal.

Every line carries the request id of the request it is about (a context variable the gateway
and the gRPC interceptor set), so one grep follows a request across processes.
"""

from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar
from datetime import UTC, datetime

REQUEST_ID: ContextVar[str | None] = ContextVar("request_id", default=None)


class _RequestIdFilter(logging.Filter):
    """Stamps each record with the current request id (from the context of the task that logs it)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = REQUEST_ID.get()
        return True


class JsonFormatter(logging.Formatter):
    def __init__(self, component: str) -> None:
        super().__init__()
        self.component = component

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "component": self.component,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None)
        if request_id:
            line["request_id"] = request_id
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def __init__(self, component: str) -> None:
        super().__init__(f"%(asctime)s {component} %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        request_id = getattr(record, "request_id", None)
        return f"{text} [request_id={request_id}]" if request_id else text


def setup_logging(component: str, level: str, log_format: str = "") -> logging.Logger:
    """Log to stdout, one line per record, as `log_format` says: json or text (unset: text on a terminal)."""
    chosen = log_format or ("text" if sys.stdout.isatty() else "json")
    handler = logging.StreamHandler(sys.stdout)
    handler.addFilter(_RequestIdFilter())
    handler.setFormatter(JsonFormatter(component) if chosen == "json" else TextFormatter(component))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for chatty in ("grpc", "redis"):  # their DEBUG lines say nothing about our requests
        logging.getLogger(chatty).setLevel(max(logging.INFO, root.level))
    # Python's own last words (an uncaught exception) go through logging too, so they stay JSON.
    sys.excepthook = lambda kind, value, trace: root.critical("uncaught exception", exc_info=(kind, value, trace))
    return logging.getLogger(component)
