"""Serve the baseline the way the seed would be deployed: gunicorn, sync workers, one per core.

`python -m bench.baseline` reads BASELINE_BIND, BASELINE_WORKERS and BASELINE_REDIS_URL.
"""

from __future__ import annotations

import os

from gunicorn.app.base import BaseApplication


class Baseline(BaseApplication):
    def __init__(self, options: dict[str, object]) -> None:
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for name, value in self.options.items():
            self.cfg.set(name, value)

    def load(self):
        from bench.baseline.app import app

        return app


if __name__ == "__main__":
    Baseline(
        {
            "bind": os.environ.get("BASELINE_BIND", "127.0.0.1:8000"),
            "workers": int(os.environ.get("BASELINE_WORKERS", str(os.cpu_count() or 1))),
            "worker_class": "sync",
            "accesslog": None,
            "loglevel": "warning",
            "graceful_timeout": 5,
        }
    ).run()
