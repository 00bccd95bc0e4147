"""A recorded run inside a network namespace of its own, removed afterwards whatever happens.

Everything of the run (cluster nodes, services, gateway, clients, nemesis) lives in the namespace, so
the nemesis's nftables rules exist only there and vanish with it; the root namespace's firewall and
routes are never touched. Needs root (`ip netns add`) and nft (`make nftables`).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

from tests.jepsen.nemesis import NAMESPACE_VARIABLE

ROOT = Path(__file__).resolve().parents[2]


def available() -> str:
    """Why a run can't happen here, or "" when it can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (make nftables)"
    return ""


def record(out: Path, *run_args: str, timeout_s: float = 3600) -> None:
    """Run tests.jepsen.run inside a fresh namespace (a unique name), then delete the namespace.

    The run's own output goes to out/run.log. Raises CalledProcessError when the run fails.
    """
    name = f"pmjepsen-{os.getpid()}-{secrets.token_hex(3)}"
    # SIGTERM (a CI runner, a timeout) unwinds like Ctrl-C, through the cleanup below.
    previous = (
        signal.signal(signal.SIGTERM, _interrupt) if threading.current_thread() is threading.main_thread() else None
    )
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"], check=True)
        out.mkdir(parents=True, exist_ok=True)
        log = out.parent / f"{out.name}.run.log"
        with log.open("w") as output:
            # A session of its own, so that the whole run (and all it started) can be ended at once.
            process = subprocess.Popen(
                ["ip", "netns", "exec", name, sys.executable, "-m", "tests.jepsen.run", "--out", str(out), *run_args],
                cwd=ROOT,
                env={**os.environ, NAMESPACE_VARIABLE: name},
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            try:
                code = process.wait(timeout_s)
            except BaseException:
                _end(process)
                raise
        shutil.move(log, out / "run.log")
        if code != 0:
            tail = (out / "run.log").read_text()[-3000:]
            raise subprocess.CalledProcessError(code, process.args, output=tail)
    finally:
        _end_namespace_processes(name)
        subprocess.run(["ip", "netns", "delete", name], check=False)
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _end(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the run's process group (its children stop theirs), SIGKILL if it won't go."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    except ProcessLookupError:
        pass


def _end_namespace_processes(name: str) -> None:
    """Whatever the run started and left in the namespace (each child has its own session): by PID."""
    found = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True, check=False)
    for pid in found.stdout.split():
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), signal.SIGKILL)
