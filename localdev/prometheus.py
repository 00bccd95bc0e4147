"""A real Prometheus (Debian's `prometheus` package) scraping a local system, from observability/prometheus.yml."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from localdev import processes
from localdev.waiting import answers_ok, poll_until

CONFIG = Path(__file__).resolve().parent.parent / "observability" / "prometheus.yml"
RULES = CONFIG.with_name("rules.yml")
# The targets observability/prometheus.yml names, for the default ports of `make run`.
DEFAULT_TARGETS = {"profile_svc": 9101, "reporting_svc": 9102, "aggregator_svc": 9103, "gateway": 9104}


def scrape_config(metrics_ports: dict[str, int], scrape_interval_s: int | None = None) -> str:
    """The repo's configuration with each component's target moved to its actual ports, one per replica
    (processes `profile_svc`, `profile_svc-2`, ... are all the job `profile_svc`)."""
    text = CONFIG.read_text().replace("  - rules.yml", f"  - {RULES}")
    for component, default_port in DEFAULT_TARGETS.items():
        ports = [port for name, port in metrics_ports.items() if name.partition("-")[0] == component]
        text = text.replace(f'"127.0.0.1:{default_port}"', ", ".join(f'"127.0.0.1:{port}"' for port in ports))
    if scrape_interval_s is not None:
        text = text.replace("scrape_interval: 5s", f"scrape_interval: {scrape_interval_s}s")
        text = text.replace("evaluation_interval: 5s", f"evaluation_interval: {scrape_interval_s}s")
    return text


def binary(name: str = "prometheus") -> str:
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(
            f"{name} is not installed: `apt-get install prometheus` (make test and "
            "PROFILEMESH_PROMETHEUS=1 make run do it)"
        )
    return found


@dataclass
class Prometheus:
    directory: Path
    port: int
    metrics_ports: dict[str, int]
    scrape_interval_s: int | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def config_path(self) -> Path:
        return self.directory / "prometheus.yml"

    def start(self, timeout_s: float = 30) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(scrape_config(self.metrics_ports, self.scrape_interval_s))
        with open(self.directory / "prometheus.log", "ab") as log:  # the child keeps its own copy
            self.process = subprocess.Popen(
                [
                    binary(),
                    f"--config.file={self.config_path}",
                    f"--storage.tsdb.path={self.directory / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--storage.tsdb.retention.time=1d",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        poll_until(self._running_and_ready, timeout_s, "prometheus to be ready", interval_s=0.2)

    def _running_and_ready(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"prometheus exited with {self.process.returncode}; see {self.directory}/prometheus.log")
        return self._ready()

    def _ready(self) -> bool:
        return answers_ok(f"{self.url}/-/ready")

    def query(self, promql: str) -> list[dict[str, Any]]:
        """An instant query through the HTTP API: the result vector."""
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        with urllib.request.urlopen(url, timeout=5) as reply:
            body = json.loads(reply.read())
        if body["status"] != "success":
            raise RuntimeError(f"query {promql!r} failed: {body}")
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def stop(self) -> None:
        if self.process is not None:
            processes.stop(self.process)
            self.process = None
