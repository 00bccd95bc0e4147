"""Key naming and partitioning, stream ids, listen addresses, input limits: pure functions."""

from __future__ import annotations

import asyncio
import zlib

import pytest
from redis.asyncio.connection import Connection
from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError

from common.errors import InvalidArgument
from common.rpc.validation import MAX_FIELDS, check_fields, check_user
from common.runtime.addresses import parse_listen
from common.storage import keys
from common.storage.internals import closed_under_command, stream_keys
from common.storage.stream_ids import format_id, parse_id

PARTITION_KEYS = [keys.events_key, keys.reads_key, keys.totals_key, keys.deleted_key, keys.deleted_at_key]


@pytest.mark.parametrize("user", ["ana", "zach", "a@b.c", "X" * 128, "0"])
def test_a_user_lives_in_the_crc32_partition(user: str) -> None:
    for partitions in (1, 16, 1024):
        assert keys.partition_of(user, partitions) == zlib.crc32(user.encode()) % partitions


def test_partitions_spread_users() -> None:
    counts = [0] * 16
    for n in range(1600):
        counts[keys.partition_of(f"user{n}", 16)] += 1
    assert min(counts) > 50, counts


@pytest.mark.parametrize(
    ("partition", "tag"), [(0, "{p00}"), (7, "{p07}"), (15, "{p15}"), (99, "{p99}"), (1023, "{p1023}")]
)
def test_everything_of_a_partition_shares_one_slot(partition: int, tag: str) -> None:
    """One hash tag per partition: a script can touch all of a partition's keys at once."""
    assert keys.tag(partition) == tag
    slots = {key_slot(make(partition).encode()) for make in PARTITION_KEYS}
    assert slots == {key_slot(tag[1:-1].encode())}


@pytest.mark.parametrize("user", ["ana", "bo", "user-42"])
def test_a_profile_shares_its_partitions_slot(user: str) -> None:
    partition = keys.partition_of(user, 16)
    assert key_slot(keys.profile_key(user, 16).encode()) == key_slot(keys.events_key(partition).encode())
    assert keys.profile_key(user, 16) == f"profile:{{p{partition:02d}}}:{user}"


def test_partition_tags_are_distinct() -> None:
    assert len({keys.tag(p) for p in range(1024)}) == 1024


@pytest.mark.parametrize(
    ("raw", "parsed"),
    [(b"1700000000000-0", (1700000000000, 0)), ("5-12", (5, 12)), ("42", (42, 0)), (b"0-0", (0, 0))],
)
def test_stream_ids(raw: bytes | str, parsed: tuple[int, int]) -> None:
    assert parse_id(raw) == parsed
    assert parse_id(format_id(parsed)) == parsed


def test_stream_ids_order_as_the_stream_does() -> None:
    assert parse_id("9-5") < parse_id("10-0") < parse_id("10-1")


@pytest.mark.parametrize("raw", ["", "x-1", "1-y", "-"])
def test_a_malformed_stream_id_is_a_value_error(raw: str) -> None:
    with pytest.raises(ValueError):
        parse_id(raw)


def test_stream_keys_are_the_first_half_after_streams() -> None:
    assert stream_keys(["XREADGROUP", "GROUP", "g", "c", "COUNT", 5, "STREAMS", "a", "b", ">", ">"]) == ["a", "b"]
    assert stream_keys([b"XREAD", b"BLOCK", 10, b"STREAMS", b"s", b"0"]) == [b"s"]


def test_a_group_or_consumer_named_streams_is_not_the_keyword() -> None:
    assert stream_keys(["xreadgroup", "GROUP", "streams", "STREAMS", "STREAMS", "k", "0"]) == ["k"]


@pytest.mark.parametrize("args", [["GET", "k"], ["XADD", "k", "*", "f", "v"], [], ["XREAD", "COUNT", "1"]])
def test_stream_keys_of_other_commands(args: list[object]) -> None:
    assert stream_keys(args) is None


@pytest.mark.parametrize(
    ("listen", "parsed"),
    [
        ("0.0.0.0:8080", ("0.0.0.0", 8080)),
        (":9101", ("0.0.0.0", 9101)),
        ("127.0.0.1:1", ("127.0.0.1", 1)),
        ("[::1]:50051", ("::1", 50051)),
        ("localhost:80", ("localhost", 80)),
    ],
)
def test_listen_addresses(listen: str, parsed: tuple[str, int]) -> None:
    assert parse_listen(listen) == parsed


@pytest.mark.parametrize("listen", ["8080x", "host:", "host:port"])
def test_a_listen_address_without_a_port(listen: str) -> None:
    with pytest.raises(ValueError):
        parse_listen(listen)


@pytest.mark.parametrize("user", ["a", "ana", "A.b_c@d+e-f", "9" * 128])
def test_valid_users(user: str) -> None:
    assert check_user(user) == user


@pytest.mark.parametrize("user", ["", "-x", ".x", "a b", "a/b", "café", "u" * 129, "a:b", "a\x00"])
def test_invalid_users_name_the_field(user: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        check_user(user, field="users")
    assert caught.value.field == "users" and "is invalid" in caught.value.message
    assert len(caught.value.message) < 200


@pytest.mark.parametrize(
    ("fields", "field", "says"),
    [
        ({}, "fields", "fields must not be empty"),
        ({f"f{i}": "x" for i in range(MAX_FIELDS + 1)}, "fields", "too many fields: 65, at most 64"),
        ({"a b": "x"}, "fields", "field name 'a b' is invalid"),
        ({"bio": "é" * 2049}, "fields.bio", "field 'bio' is 4098 bytes, at most 4096"),
    ],
)
def test_invalid_fields_name_the_field(fields: dict[str, str], field: str, says: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        check_fields(fields)
    assert (caught.value.field, caught.value.message.startswith(says)) == (field, True)


def test_valid_fields_are_returned_as_a_dict() -> None:
    assert check_fields({"email": "a@b", "bio": "x" * 4096}) == {"email": "a@b", "bio": "x" * 4096}


def test_a_connection_closed_under_a_command_is_a_connection_error() -> None:
    """redis-py's own AttributeError on a torn-down connection becomes the ConnectionError it means."""

    async def send_on_a_closed_connection() -> None:
        with closed_under_command():
            await Connection(port=1)._send_packed_command([b"PING"])  # its writer is None: never connected

    with pytest.raises(RedisConnectionError, match="connection closed under a running command") as caught:
        asyncio.run(send_on_a_closed_connection())
    assert isinstance(caught.value.__cause__, AttributeError)


@pytest.mark.parametrize("bug", [AttributeError("ours"), TypeError("ours too")])
def test_the_same_errors_from_our_own_code_stay_bugs(bug: Exception) -> None:
    async def buggy() -> None:
        with closed_under_command():
            raise bug

    with pytest.raises(type(bug)):
        asyncio.run(buggy())


def test_the_read_checks_fence_shares_its_partitions_slot_and_is_never_a_profile() -> None:
    profile = keys.profile_key("ana", 16)
    fence = keys.fence_key(profile)
    assert fence == keys.fence_key(keys.events_key(keys.partition_of("ana", 16)))
    assert key_slot(fence.encode()) == key_slot(profile.encode())
    assert fence.startswith(keys.PROFILE_PREFIX) and ":" not in fence.split("}", 1)[1]
