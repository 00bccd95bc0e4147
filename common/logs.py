"""One log format for every process: timestamp, service, level, message."""

from __future__ import annotations

import logging


def setup_logging(service: str, level: str) -> logging.Logger:
    logging.basicConfig(
        level=level.upper(),
        format=f"%(asctime)s {service} %(levelname)s %(name)s: %(message)s",
    )
    return logging.getLogger(service)
