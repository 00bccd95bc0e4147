"""Free loopback ports, so tests and benchmarks never collide with a running `make run`."""

from __future__ import annotations

import random
import socket

_handed_out: set[int] = set()


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


def free_ports(count: int) -> list[int]:
    """Ports below Linux's ephemeral range (32768+), where outgoing connections never land."""
    ports: list[int] = []
    while len(ports) < count:
        port = random.randint(20000, 32000)
        if port not in _handed_out and port_is_free(port):
            _handed_out.add(port)
            ports.append(port)
    return ports
