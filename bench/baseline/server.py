"""Start and stop the baseline (gunicorn) as a child process on a free port."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from localdev import processes
from localdev.waiting import answers_ok, poll_until


@dataclass
class BaselineServer:
    redis_url: str
    port: int
    log_path: Path
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)  # the seed's deployment: one per core
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 30) -> None:
        env = dict(
            os.environ,
            BASELINE_BIND=f"127.0.0.1:{self.port}",
            BASELINE_WORKERS=str(self.workers),
            BASELINE_REDIS_URL=self.redis_url,
        )
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "bench.baseline"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        poll_until(self._running_and_healthy, timeout_s, f"the baseline to answer (see {self.log_path})")

    def _running_and_healthy(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"the baseline exited ({self.process.returncode}); see {self.log_path}")
        return answers_ok(f"{self.url}/healthz")

    def pids(self) -> list[int]:
        """The gunicorn master and its workers."""
        if self.process is None or self.process.poll() is not None:
            return []
        master = psutil.Process(self.process.pid)
        return [master.pid, *(child.pid for child in master.children(recursive=True))]

    def stop(self, timeout_s: float = 15) -> None:
        """SIGTERM to the master, which stops its workers gracefully; SIGKILL if it hangs."""
        if self.process is not None:
            processes.stop(self.process, signal.SIGTERM, timeout_s)
