"""`profilemesh watch`: requests/s, errors/s, p99 and aggregator lag per component, from their /metrics."""

from __future__ import annotations

import math
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.live import Live
from rich.table import Table

from profilemesh_cli.endpoints import COMPONENTS, Endpoints

# What counts as an error: the server's fault or overload, not a caller's NOT_FOUND or bad input.
GRPC_ERRORS = {"UNKNOWN", "INTERNAL", "UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "DATA_LOSS"}
NOT_REQUESTS = ("/grpc.", "/healthz", "/readyz")  # health checks and reflection are not traffic


@dataclass
class Sample:
    """Cumulative figures of one component at one moment."""

    at: float
    requests: float = 0.0
    errors: float = 0.0
    buckets: dict[float, float] = field(default_factory=dict)  # upper bound -> cumulative count
    applied: float = 0.0
    lag: float = 0.0  # gauges: undelivered + pending entries over every partition
    oldest_s: float = 0.0


def _scrape(url: str) -> Sample | None:
    try:
        with urllib.request.urlopen(url, timeout=1) as reply:
            text = reply.read().decode()
    except (urllib.error.URLError, OSError):
        return None
    sample = Sample(at=time.monotonic())
    lag: dict[str, float] = {}
    pending: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            where = s.labels.get("method") or s.labels.get("route") or ""
            if where.startswith(NOT_REQUESTS):
                continue
            if s.name in ("profilemesh_grpc_server_requests_total", "profilemesh_http_requests_total"):
                sample.requests += s.value
                code = s.labels.get("code") or s.labels.get("status", "")
                if code in GRPC_ERRORS or code.startswith("5") or code == "429":
                    sample.errors += s.value
            elif s.name in (
                "profilemesh_grpc_server_request_duration_seconds_bucket",
                "profilemesh_http_request_duration_seconds_bucket",
            ):
                bound = float(s.labels["le"])
                sample.buckets[bound] = sample.buckets.get(bound, 0.0) + s.value
            elif s.name == "profilemesh_aggregator_events_applied_total":
                sample.applied = s.value
            elif s.name == "profilemesh_aggregator_lag_entries":
                lag[s.labels["partition"]] = s.value
            elif s.name == "profilemesh_aggregator_pending_entries":
                pending[s.labels["partition"]] = s.value
            elif s.name in (
                "profilemesh_aggregator_oldest_undelivered_age_seconds",
                "profilemesh_aggregator_oldest_pending_age_seconds",
            ):
                sample.oldest_s = max(sample.oldest_s, s.value)
    sample.lag = sum(lag.values()) + sum(pending.values())
    return sample


def _p99(before: dict[float, float], after: dict[float, float]) -> float | None:
    """The 99th percentile of the calls between two samples, from histogram buckets (upper bound)."""
    counts = sorted((bound, after[bound] - before.get(bound, 0.0)) for bound in after)
    total = counts[-1][1] if counts else 0.0
    if total <= 0:
        return None
    for bound, cumulative in counts:
        if cumulative >= 0.99 * total:
            return bound
    return math.inf


def _table(endpoints: Endpoints, before: dict[str, Sample | None], after: dict[str, Sample | None]) -> Table:
    table = Table(title=f"profilemesh  {time.strftime('%H:%M:%S')}")
    table.add_column("component", no_wrap=True, min_width=14)
    for heading in ("req/s", "errors/s", "p99", "applied/s", "lag", "oldest"):
        table.add_column(heading, justify="right", no_wrap=True)
    for component in COMPONENTS:
        now, then = after.get(component), before.get(component)
        if now is None:
            table.add_row(component, "[red]down[/red]", "", "", "", "", "")
            continue
        if then is None or now.at <= then.at:
            table.add_row(component, "…", "", "", "", "", "")
            continue
        elapsed = now.at - then.at
        p99 = _p99(then.buckets, now.buckets)
        is_aggregator = component == "aggregator_svc"
        table.add_row(
            component,
            f"{(now.requests - then.requests) / elapsed:.1f}",
            f"{(now.errors - then.errors) / elapsed:.1f}",
            "-" if p99 is None else ">10 s" if p99 == math.inf else f"≤{p99 * 1000:g} ms",
            f"{(now.applied - then.applied) / elapsed:.1f}" if is_aggregator else "",
            f"{now.lag:.0f}" if is_aggregator else "",
            f"{now.oldest_s:.1f} s" if is_aggregator else "",
        )
    return table


def watch(endpoints: Endpoints, interval_s: float, count: int | None) -> int:
    """Refresh every `interval_s` until Ctrl-C, or `count` times; a terminal gets one live table."""
    urls = {component: endpoints.metrics_url(component) for component in COMPONENTS}
    previous = {c: _scrape(u) if u else None for c, u in urls.items()}
    if all(sample is None for sample in previous.values()):
        print(
            "error: no component serves metrics at "
            + ", ".join(u for u in urls.values() if u)
            + "; is profilemesh running (make run)?",
            file=sys.stderr,
        )
        return 2
    console = Console()
    shown = 0
    try:
        with (
            Live(console=console, auto_refresh=False, transient=False)
            if console.is_terminal
            else _Plain(console) as view
        ):
            while count is None or shown < count:
                time.sleep(interval_s)
                current = {c: _scrape(u) if u else None for c, u in urls.items()}
                view.update(_table(endpoints, previous, current), refresh=True)
                previous = current
                shown += 1
    except KeyboardInterrupt:
        pass
    return 0


class _Plain:
    """Not a terminal (a pipe, a file): print each table instead of redrawing one."""

    def __init__(self, console: Console) -> None:
        self.console = console

    def __enter__(self) -> _Plain:
        return self

    def __exit__(self, *_: object) -> None:
        return None

    def update(self, table: Table, refresh: bool = True) -> None:
        self.console.print(table)
