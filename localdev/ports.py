"""Free loopback ports, so tests and benchmarks never collide with a running `make run`, nor with each other.

A port found free is only free until someone binds it, and the servers that bind ours are child
processes started later. Two runs on one machine (two engineers' test sessions, a benchmark beside
a test) used to pick ports at random from the same range, so one could take a port the other had
just found free. Now each process first claims a block of ports for itself, with an exclusive
lock on a file named after the block, and hands out ports from its own blocks only. The lock is
the kernel's (flock): it goes when the process ends, however it ends, so no block stays claimed
by a run that is gone; the processes a run starts serve on its ports while it lives.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
import socket
import tempfile
from pathlib import Path
from typing import IO

# Below Linux's ephemeral range (32768+), where outgoing connections never land.
FIRST_PORT = 20000
LAST_PORT = 32000
BLOCK_SIZE = 50
LOCK_DIR = Path(tempfile.gettempdir()) / "profilemesh-ports"

_handed_out: set[int] = set()
_blocks: list[int] = []  # the first port of each block this process holds
_locks: list[IO[bytes]] = []  # their lock files, open (and so locked) until the process ends


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # As servers bind (valkey, gRPC, aiohttp all set SO_REUSEADDR): connections left in TIME_WAIT
        # by a stopped node must not make its port look taken when the node starts again.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def claim_block(first: int) -> bool:
    """Lock the block starting at `first` for this process; False if another process holds it."""
    LOCK_DIR.mkdir(exist_ok=True)
    path = LOCK_DIR / f"{first}.lock"
    lock = open(path, "ab")  # noqa: SIM115  (kept open: the lock lives as long as the file stays open)
    # Another user's run may claim blocks after ours: the folder and the file open to all (if they are ours).
    for shared, mode in ((LOCK_DIR, 0o1777), (path, 0o666)):
        with contextlib.suppress(OSError):
            os.chmod(shared, mode)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.close()
        return False
    _locks.append(lock)
    _blocks.append(first)
    return True


def _claim_any_block() -> None:
    firsts = list(range(FIRST_PORT, LAST_PORT - BLOCK_SIZE + 1, BLOCK_SIZE))
    random.shuffle(firsts)
    for first in firsts:
        if first not in _blocks and claim_block(first):
            return
    raise RuntimeError(f"every block of ports from {FIRST_PORT} to {LAST_PORT} is held by another process")


def free_ports(count: int) -> list[int]:
    """`count` distinct ports free now, from blocks no other process using this module hands out from."""
    ports: list[int] = []
    while True:
        for first in list(_blocks):
            for port in range(first, first + BLOCK_SIZE):
                if len(ports) == count:
                    return ports
                if port not in _handed_out and port_is_free(port):
                    _handed_out.add(port)
                    ports.append(port)
        if len(ports) == count:
            return ports
        _claim_any_block()
