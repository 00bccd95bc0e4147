"""The cluster nodes' processes by index: started, stopped on purpose, and which exited by themselves.

Under one lock: the supervisor's thread looks at them while tests start and stop nodes.
"""

from __future__ import annotations

import signal
import subprocess
import threading

from localdev import processes


class NodeProcesses:
    def __init__(self) -> None:
        self.by_index: dict[int, subprocess.Popen[bytes]] = {}
        self._lock = threading.Lock()

    def start(self, index: int, args: list[str]) -> None:
        # A new session: Ctrl-C in a terminal reaches the supervisor, which stops nodes in order.
        # umask 077: the node's append-only files, RDB and nodes.conf hold profiles, readable by us alone.
        process = subprocess.Popen(args, start_new_session=True, stdout=subprocess.DEVNULL, umask=0o077)
        with self._lock:
            self.by_index[index] = process

    def stop(self, index: int, sig: int = signal.SIGTERM, timeout_s: float = 30) -> None:
        """Stop the node at `index` on purpose: it is no longer ours to watch."""
        with self._lock:
            process = self.by_index.pop(index, None)
        if process is not None:
            processes.stop(process, sig, timeout_s)

    def running(self) -> list[int]:
        with self._lock:
            return [index for index, process in self.by_index.items() if process.poll() is None]

    def exited(self) -> dict[int, int]:
        """Index -> exit code of every node that exited without stop."""
        with self._lock:
            return {index: process.returncode for index, process in self.by_index.items() if process.poll() is not None}

    def still_exited(self, index: int, code: int) -> bool:
        """Whether the node at `index` is still the one that exited with `code` (stop took none meanwhile)."""
        with self._lock:
            return index in self.by_index and self.by_index[index].returncode == code
