"""Stopping a child process we started: a signal, a wait, and SIGKILL if it won't go."""

from __future__ import annotations

import signal
import subprocess


def stop(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout_s: float = 20) -> int:
    """Send `sig` (if still running), wait up to `timeout_s`, then kill; returns the exit code."""
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode
