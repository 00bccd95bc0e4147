"""What confirms an operation before it is acknowledged: the durability level of changes and the read check.

Settings name the policy (PROFILEMESH_DURABILITY, PROFILEMESH_READ_CHECK); this turns it into the command
pipelined after each script on the same connection, and judges that command's reply.
"""

from __future__ import annotations

from enum import Enum
from typing import Any

from common.runtime.config import Durability, ReadCheck


class Confirm(Enum):
    """What an operation waits for after its script."""

    NOTHING = "nothing"  # the script's reply is the answer (the aggregator, the feed, reports)
    WRITE = "write"  # a profile change: the durability level
    READ = "read"  # a profile read: the read check


class Waits:
    """The confirming command for each kind of operation, from the deployment's policy."""

    def __init__(self, durability: Durability, read_check: ReadCheck, timeout_ms: int) -> None:
        self.durability = durability
        self.write: tuple[Any, ...] | None = {
            Durability.NONE: None,
            Durability.LOCAL: ("WAITAOF", 1, 0, timeout_ms),
            Durability.REPLICA: ("WAIT", 1, timeout_ms),
        }[durability]
        self.read: tuple[Any, ...] | None = ("WAIT", 1, timeout_ms) if read_check is ReadCheck.REPLICA else None
        # Looked up on every operation: made once.
        self._by_confirm = {Confirm.NOTHING: None, Confirm.WRITE: self.write, Confirm.READ: self.read}

    def command(self, confirm: Confirm) -> tuple[Any, ...] | None:
        return self._by_confirm[confirm]

    @staticmethod
    def confirmed(wait: tuple[Any, ...], reply: Any) -> bool:
        """Whether the wait's reply confirms what it waited for (an error reply confirms nothing)."""
        if isinstance(reply, Exception):
            return False
        if wait[0] == "WAITAOF":  # [fsynced locally, fsynced on replicas]
            return int(reply[0]) >= 1
        return int(reply) >= 1  # WAIT: replicas that have the write
