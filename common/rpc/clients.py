"""Who the client is: the one answer the gateway's rate limit, its SSE share and the services' stream share use.

A client is its address: the peer's, unless the peer is a trusted proxy (PROFILEMESH_TRUSTED_PROXIES, CIDRs).
A trusted proxy appends the address it saw to X-Forwarded-For, so the right-most entry that is not itself a
trusted proxy is the client; everything left of it is the client's own say and is ignored. A peer that is
not trusted can't name anyone: its X-Forwarded-For counts for nothing.

The gateway is one gRPC peer for all of its HTTP clients, so it passes on whom each stream is for as the
`x-forwarded-for` metadata; a service takes it only from peers in its own PROFILEMESH_TRUSTED_PROXIES (the
gateway's addresses), and otherwise counts the gRPC peer.
"""

from __future__ import annotations

import ipaddress
import urllib.parse
from collections.abc import Iterable

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
FORWARDED_METADATA = "x-forwarded-for"  # the gateway's metadata naming the HTTP client a stream is for
MAX_FORWARDED_ENTRIES = 32  # a longer chain is walked only this far from the right


def parse_networks(text: str) -> tuple[Network, ...]:
    """`10.0.0.0/8, 192.168.1.7` (a bare address is a /32 or /128); ValueError naming an entry that is neither."""
    networks = []
    for entry in filter(None, (part.strip() for part in text.split(","))):
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            raise ValueError(f"{entry[:60]!r} is not an address or a CIDR block") from None
    return tuple(networks)


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped  # ::ffff:10.1.2.3 is 10.1.2.3, as a proxy of either family sees it
    return address


def _trusted(address: ipaddress.IPv4Address | ipaddress.IPv6Address | None, trusted: tuple[Network, ...]) -> bool:
    return address is not None and any(address in network for network in trusted)


def client_address(peer: str, forwarded: Iterable[str], trusted: tuple[Network, ...]) -> str:
    """The client behind `peer` (an address): itself, or, when it is a trusted proxy, the right-most
    untrusted address of the X-Forwarded-For values `forwarded` (every header's, in order)."""
    peer_address = _address(peer)
    if not trusted or not _trusted(peer_address, trusted):
        return str(peer_address) if peer_address is not None else peer
    entries = [entry for value in forwarded for entry in value.split(",")][-MAX_FORWARDED_ENTRIES:]
    client = str(peer_address)
    for entry in reversed(entries):
        address = _address(entry)
        if address is None:  # not an address: a proxy would not have written it; what is right of it stands
            break
        client = str(address)
        if not _trusted(address, trusted):
            break
    return client


def grpc_peer_address(peer: str) -> str:
    """The host of a gRPC peer string (`ipv4:10.1.2.3:5000`, `ipv6:[::1]:5000`, `unix:...`)."""
    kind, _, rest = urllib.parse.unquote(peer).partition(":")
    if kind in ("ipv4", "ipv6"):
        return rest.rpartition(":")[0].strip("[]")
    return peer
