"""When the local cluster is ready: every running node sees a healthy cluster and every replica is in sync."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from common.errors import StorageError
from common.storage.nodes import Node
from localdev.waiting import poll_until


def cluster_ready(nodes: Iterable[Node]) -> bool:
    """Every node of `nodes` sees every slot served, and each replica's link to its primary is up."""
    try:
        for node in nodes:
            if not node.cluster_state_ok():
                return False
            info = node.replication()
            if info["role"] == "slave" and info.get("master_link_status") != "up":
                return False
    except (StorageError, KeyError):
        return False
    return True


def wait_while_running(
    condition: Callable[[], bool], check_running: Callable[[], None], timeout_s: float, what: str
) -> None:
    """poll_until `condition`, failing at once (through `check_running`) if a node exited meanwhile."""

    def running_and() -> bool:
        check_running()
        return condition()

    poll_until(running_and, timeout_s, what)
