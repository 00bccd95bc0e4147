"""REST load through wrk: runs one wrk process, parses the JSON its Lua done() hook prints.

wrk's CPU comes from os.wait4's rusage of the finished process, so the report can say
whether the generator, rather than the server, was the limit.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

from bench.results import LoadResult

SCRIPTS = Path(__file__).parent / "wrk"
MARKER = "BENCH_JSON "


def wrk_binary() -> str:
    found = shutil.which("wrk")
    if not found:
        raise FileNotFoundError("wrk is not installed: `make bench` installs it (apt-get install wrk)")
    return found


def run_wrk(
    scenario: str,
    system: str,
    url: str,
    script: str,
    script_args: list[str],
    concurrency: int,
    duration_s: int,
    threads: int = 1,
) -> LoadResult:
    """One wrk run of `duration_s` seconds with `concurrency` connections; blocks until it ends."""
    threads = min(threads, concurrency)
    command = [
        wrk_binary(),
        f"-t{threads}",
        f"-c{concurrency}",
        f"-d{duration_s}s",
        "--timeout",
        "5s",
        "-s",
        str(SCRIPTS / script),
        url,
        "--",
        *script_args,
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    stdout = process.stdout.read()  # type: ignore[union-attr]
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    lines = [line for line in stdout.splitlines() if line.startswith(MARKER)]
    if process.returncode != 0 or not lines:
        raise RuntimeError(f"wrk failed ({process.returncode}): {stdout.strip()[-2000:]}")
    data = json.loads(lines[-1][len(MARKER) :])
    duration = data["duration_us"] / 1e6
    return LoadResult(
        scenario=scenario,
        system=system,
        concurrency=concurrency,
        requests=data["requests"],
        duration_s=duration,
        p50_ms=data["p50_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        p999_ms=data["p999_us"] / 1000,
        errors=data["status_errors"] + data["socket_errors"],
        generator_cpu=(usage.ru_utime + usage.ru_stime) / duration if duration else 0.0,
        generator_cores=threads,
    )
