"""Listen addresses as the settings give them (`host:port`, `[::1]:port`, `:port`)."""

from __future__ import annotations


def parse_listen(listen: str) -> tuple[str, int]:
    """The host (every interface when empty) and port of a listen address; ValueError if the port isn't one."""
    host, _, port = listen.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)
