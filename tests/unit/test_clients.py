"""Who the client is (common/rpc/clients.py) and each client's share of the stream slots (common/rpc/streams.py)."""

from __future__ import annotations

import pytest

from common.errors import ConfigError, TooManyStreams
from common.rpc.clients import client_address, grpc_peer_address, parse_networks
from common.rpc.streams import StreamLimits
from common.runtime.config import Settings

PROXIES = parse_networks("10.0.0.0/8, 192.168.1.7")


@pytest.mark.parametrize(
    ("peer", "forwarded", "client"),
    [
        ("203.0.113.5", [], "203.0.113.5"),  # no proxy
        ("203.0.113.5", ["198.51.100.1"], "203.0.113.5"),  # an untrusted peer's header counts for nothing
        ("10.1.2.3", [], "10.1.2.3"),  # a proxy without a header is the client
        ("10.1.2.3", ["198.51.100.1"], "198.51.100.1"),
        ("10.1.2.3", ["1.1.1.1, 198.51.100.1"], "198.51.100.1"),  # the client's own say (1.1.1.1) is ignored
        ("10.1.2.3", ["1.1.1.1, 198.51.100.1, 192.168.1.7"], "198.51.100.1"),  # through two proxies
        ("10.1.2.3", ["1.1.1.1", "198.51.100.1"], "198.51.100.1"),  # several headers: in order
        ("10.1.2.3", ["10.9.9.9, 10.8.8.8"], "10.9.9.9"),  # only proxies: the left-most
        ("10.1.2.3", ["garbage, 198.51.100.1"], "198.51.100.1"),
        ("10.1.2.3", ["198.51.100.1, garbage"], "10.1.2.3"),  # no proxy writes that: the peer stands
        ("::ffff:10.1.2.3", ["2001:db8::1"], "2001:db8::1"),  # a v4-mapped proxy address is the v4 one
    ],
)
def test_the_client_is_the_right_most_untrusted_forwarded_address(peer: str, forwarded: list[str], client: str) -> None:
    assert client_address(peer, forwarded, PROXIES) == client


def test_without_trusted_proxies_the_peer_is_the_client() -> None:
    assert client_address("10.1.2.3", ["198.51.100.1"], ()) == "10.1.2.3"


def test_grpc_peer_strings() -> None:
    assert grpc_peer_address("ipv4:127.0.0.1:50123") == "127.0.0.1"
    assert grpc_peer_address("ipv6:[::1]:50123") == "::1"
    assert grpc_peer_address("ipv6:%5B::1%5D:50123") == "::1"
    assert grpc_peer_address("unix:/tmp/x.sock") == "unix:/tmp/x.sock"


def test_a_bad_trusted_proxies_value_names_the_variable_and_the_entry() -> None:
    with pytest.raises(ConfigError, match=r"PROFILEMESH_TRUSTED_PROXIES: 'nonsense' is not an address or a CIDR"):
        Settings(trusted_proxies="10.0.0.0/8, nonsense")


def test_one_client_holds_at_most_its_share_and_gets_it_back_when_a_stream_ends() -> None:
    limits = StreamLimits(Settings(max_streams=8, stream_client_share_percent=25).streams())
    assert limits.per_client == 2
    with limits.slot("a"), limits.slot("a"):
        with pytest.raises(TooManyStreams) as refused, limits.slot("a"):
            pass
        assert refused.value.reason == "TOO_MANY_STREAMS_FROM_CLIENT"
        with limits.slot("b"):  # another client still gets its streams
            assert limits.open == 3
    assert limits.open == 0 and limits.by_client == {}
    with limits.slot("a"):
        pass


def test_a_small_pool_still_gives_each_client_one_stream() -> None:
    assert StreamLimits(Settings(max_streams=2, stream_client_share_percent=1).streams()).per_client == 1
    assert StreamLimits(Settings(max_streams=6, stream_client_share_percent=100).streams()).per_client == 6
