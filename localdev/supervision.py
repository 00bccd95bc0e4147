"""Self-healing: a node that exits is started again on its own port and data, as a managed service replaces a
failed node, once that is safe; it rejoins as a replica of whoever is its shard's primary now."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable

from common.errors import StorageError
from common.storage.topology import NodeLine
from localdev.node_processes import NodeProcesses


def restart_outcome(nodes: list[NodeLine], address: str, down_for_s: float, node_timeout_s: float) -> str | None:
    """What the node at `address` comes back as, if it may start again now; None while it must wait.

    A primary that died is started again only once its replica took its slots over: coming back
    first, from an append-only file fsynced once a second, it would stay primary and make its
    replica resync from it, dropping writes the replica had acknowledged. It does come back
    (eventually) when it has no replica left to take over.
    """
    me = next((node for node in nodes if node.address == address), None)
    if me is None:
        return "it joins the cluster"
    if not me.slot_ranges:  # a replica, or a primary whose slots were taken over
        primary = next((node for node in nodes if node.id == me.primary_id), None)
        where = primary.address if primary else "the node that took its slots over"
        return f"it rejoins as a replica of {where}"
    replicas = [node for node in nodes if node.primary_id == me.id and not node.failing]
    if not replicas or down_for_s > 3 * node_timeout_s:
        return "it is its shard's primary again (no replica took over)"
    return None


class Supervisor:
    """A thread that starts again (with `restart`) every node of `nodes` that exited without stop."""

    def __init__(
        self,
        nodes: NodeProcesses,
        topology: Callable[[], list[NodeLine]],
        restart: Callable[[int], None],
        address: Callable[[int], str],
        node_timeout_s: float,
    ) -> None:
        self._nodes = nodes
        self._topology = topology
        self._restart = restart
        self._address = address
        self._node_timeout_s = node_timeout_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cluster-supervisor", daemon=True)
        self._down_since: dict[int, float] = {}

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            for index, code in self._nodes.exited().items():
                self._heal(index, code)

    def _heal(self, index: int, code: int) -> None:
        """Start the node at `index` again if that is safe now; else leave it for a later round."""
        since = self._down_since.setdefault(index, time.time())
        try:
            outcome = restart_outcome(self._topology(), self._address(index), time.time() - since, self._node_timeout_s)
        except (RuntimeError, StorageError):
            return  # no node answers right now; look again on the next round
        if outcome is None:
            return
        if not self._nodes.still_exited(index, code):  # stop took it meanwhile: then it stays down
            self._down_since.pop(index, None)
            return
        try:
            self._restart(index)
        except RuntimeError:
            return  # its port is not free yet
        self._down_since.pop(index)
        print(
            f"[cluster {time.strftime('%H:%M:%S')}] node {self._address(index)} exited (code {code}) at "
            f"{time.strftime('%H:%M:%S', time.localtime(since))}; started it again on its own port and data "
            f"{time.time() - since:.1f} s later; {outcome}",
            file=sys.stderr,
            flush=True,
        )
