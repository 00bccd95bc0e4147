"""The change feed's positions and resume tokens (profile_svc/events_feed.py), without a cluster.

A token is the whole of a subscriber's position, signed by its deployment: what it encodes must come back
exactly, and anything this deployment did not issue (another deployment's, altered, cut short, for another
partition count, out of range, of an earlier format) must be refused as INVALID_ARGUMENT naming
resume_token, before anything reaches the streams. Random positions come from seeded generators, so a
failure names the seed that shows it.
"""

from __future__ import annotations

import base64
import random
from collections.abc import Callable

import grpc
import pytest

from common.errors import InvalidArgument
from profile_svc.events_feed import (
    FULL_TOKEN_PREFIX,
    Anchor,
    Event,
    Position,
    SignedToken,
    Tokens,
    read_token,
)
from profile_svc.feed_checkpoints import BEFORE_FIRST, MAX_I64, MAX_U64

SECRET = b"0f" * 32
OTHER_SECRET = b"a1" * 32
SEEDS = range(40)


def _anchor(rng: random.Random) -> Anchor:
    """A position's entry: the one before the first, a typical one, or one at the edges of the ranges."""
    kind = rng.randrange(4)
    if kind == 0:
        return BEFORE_FIRST
    if kind == 1:
        return Anchor((rng.randrange(1, MAX_U64 + 1), rng.randrange(MAX_U64 + 1)), MAX_I64, MAX_I64)
    ms = rng.randrange(1_600_000_000_000, 1_900_000_000_000)
    return Anchor((ms, rng.randrange(50)), rng.randrange(1, 10**9), ms + rng.randrange(-5, 5))


def _anchors(rng: random.Random, partitions: int) -> list[Anchor]:
    return [_anchor(rng) for _ in range(partitions)]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _signed_body(tokens: Tokens, packed: str, identity: str | None = None) -> str:
    """A token with any body, correctly signed by `tokens`: so only the range checks can refuse it."""
    body = ((tokens.identity if identity is None else identity) + ";" + packed).encode()
    return FULL_TOKEN_PREFIX + _b64(body) + "." + _b64(tokens._mac(body))


def _refused(resume: Callable[[], object]) -> InvalidArgument:
    """The error a refused token gets: INVALID_ARGUMENT naming resume_token, never the secret."""
    with pytest.raises(InvalidArgument) as caught:
        resume()
    error = caught.value
    assert error.field == "resume_token"
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert SECRET.decode() not in error.message and OTHER_SECRET.decode() not in error.message
    return error


def _resume(tokens: Tokens, token: str) -> list[Anchor]:
    """What EventsFeed.resume does once it has the deployment's tokens."""
    return tokens.check(read_token(token, tokens.partitions)).anchors


@pytest.mark.parametrize("seed", SEEDS)
def test_a_token_gives_back_exactly_the_position_it_was_issued_for(seed: int) -> None:
    rng = random.Random(seed)
    partitions = rng.choice([1, 2, 3, 16, 64, 1024])
    anchors = _anchors(rng, partitions)
    token = Tokens(SECRET, partitions).issue(anchors)
    assert token.startswith(FULL_TOKEN_PREFIX)
    # Another process of the same deployment (the same secret) reads it back.
    assert _resume(Tokens(SECRET, partitions), token) == anchors


def test_the_largest_numbers_fit_the_length_bound() -> None:
    largest = Anchor((MAX_U64, MAX_U64), MAX_I64, MAX_I64)
    for partitions in (1, 16, 1024):
        tokens = Tokens(SECRET, partitions)
        assert _resume(tokens, tokens.issue([largest] * partitions)) == [largest] * partitions


@pytest.mark.parametrize("seed", SEEDS[:10])
def test_a_position_advances_per_partition_and_its_token_carries_it(seed: int) -> None:
    rng = random.Random(seed)
    tokens = Tokens(SECRET, 8)
    start = _anchors(rng, 8)
    given = list(start)
    position = Position(start, tokens)
    expected = list(start)
    for _ in range(50):
        partition = rng.randrange(8)
        anchor = _anchor(rng)
        position.advance(Event(anchor.id, anchor.n, partition, "u", "update", anchor.ts))
        expected[partition] = anchor
        assert position.anchors == expected
    assert start == given, "the position copies its anchors rather than moving the caller's"
    assert _resume(tokens, position.token()) == expected
    assert Position(_resume(tokens, position.token()), tokens).token() == position.token()


def test_another_deployments_token_is_refused() -> None:
    token = Tokens(OTHER_SECRET, 4).issue([BEFORE_FIRST] * 4)
    read_token(token, 4)  # well formed: only the secret can tell
    error = _refused(lambda: _resume(Tokens(SECRET, 4), token))
    assert "another profilemesh deployment" in error.message


def test_a_token_signed_with_another_secret_under_our_identity_is_refused() -> None:
    ours, theirs = Tokens(SECRET, 2), Tokens(OTHER_SECRET, 2)
    forged = _signed_body(theirs, "5-0.1.5,0-0.0.0", identity=ours.identity)
    error = _refused(lambda: _resume(ours, forged))
    assert "altered" in error.message


@pytest.mark.parametrize("seed", SEEDS[:10])
def test_an_altered_position_is_refused(seed: int) -> None:
    rng = random.Random(seed)
    tokens = Tokens(SECRET, 4)
    anchors = _anchors(rng, 4)
    token = tokens.issue(anchors)
    signed = read_token(token, 4)
    # The body with one partition moved on, under the original MAC: well formed, but not what was signed.
    partition = rng.randrange(4)
    moved = list(anchors)
    moved[partition] = Anchor((7, 7), 7, 7)
    body = tokens.issue(moved)[len(FULL_TOKEN_PREFIX) :].partition(".")[0]
    altered = FULL_TOKEN_PREFIX + body + "." + _b64(signed.mac)
    assert read_token(altered, 4).anchors == moved
    assert "altered" in _refused(lambda: _resume(tokens, altered)).message


@pytest.mark.parametrize("seed", SEEDS)
def test_a_token_changed_in_any_one_character_is_refused(seed: int) -> None:
    """Every change is refused, including one in the spare bits of base64's last character, which a lenient
    decoder ignores: a token has one spelling."""
    rng = random.Random(seed)
    tokens = Tokens(SECRET, 3)
    anchors = _anchors(rng, 3)
    token = tokens.issue(anchors)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/ "
    for _ in range(30):
        at = rng.randrange(len(token))
        changed = token[:at] + rng.choice(alphabet.replace(token[at], "")) + token[at + 1 :]
        _refused(lambda changed=changed: _resume(tokens, changed))


@pytest.mark.parametrize("seed", SEEDS[:10])
def test_a_truncated_token_is_refused(seed: int) -> None:
    rng = random.Random(seed)
    tokens = Tokens(SECRET, 2)
    token = tokens.issue(_anchors(rng, 2))
    for length in range(len(token)):
        _refused(lambda length=length: _resume(tokens, token[:length]))


def test_a_token_for_another_partition_count_is_refused() -> None:
    token = Tokens(SECRET, 16).issue([BEFORE_FIRST] * 16)
    error = _refused(lambda: read_token(token, 8))
    assert "covers 16 partitions but this deployment has 8" in error.message
    _refused(lambda: read_token(Tokens(SECRET, 2).issue([BEFORE_FIRST] * 2), 3))


def test_a_token_of_a_layout_since_resized_is_refused_even_at_the_same_count() -> None:
    """16 -> 64 -> 16 partitions: the count is back, the streams are another generation's."""
    first = Tokens(SECRET, 16).issue([BEFORE_FIRST] * 16)
    assert _resume(Tokens(SECRET, 16, generation=0), first) == [BEFORE_FIRST] * 16  # the first layout's, as before
    error = _refused(lambda: _resume(Tokens(SECRET, 16, generation=2), first))
    assert "before its partitions were resized" in error.message
    later = Tokens(SECRET, 16, generation=2).issue([BEFORE_FIRST] * 16)
    assert _resume(Tokens(SECRET, 16, generation=2), later) == [BEFORE_FIRST] * 16


@pytest.mark.parametrize(
    "packed",
    [
        f"{MAX_U64 + 1}-0.1.1",  # an id's milliseconds beyond 64 bits
        f"1-{MAX_U64 + 1}.1.1",  # its sequence likewise
        f"1-0.{MAX_I64 + 1}.1",  # an offset beyond a signed 64-bit integer
        f"1-0.1.{MAX_I64 + 1}",  # a time likewise
        "1-0.-1.1",  # negative
        "01-0.1.1",  # not canonical: a leading zero
        "1-0.01.1",
        "1-0.1.+1",
        "1-0.1. 1",
        "1-0.\u0661.1",  # a digit, but not an ASCII one
        "1-0.1",  # a part missing
        "1-0.1.1.1",  # a part too many
        "1.1.1",  # an id without its sequence
        "1-0-0.1.1",
        "1-0.0.1",  # offset 0 belongs only to the position before the first entry
        "0-0.3.0",  # and that position has offset 0
        "",
    ],
)
def test_numbers_out_of_range_or_not_canonical_are_refused_even_when_signed(packed: str) -> None:
    tokens = Tokens(SECRET, 1)
    _refused(lambda: read_token(_signed_body(tokens, packed), 1))


@pytest.mark.parametrize(
    "token",
    [
        "",
        "v1." + _b64(b"1-0,2-0"),  # the first format: ids only, no offsets, no MAC
        "v1." + _b64(b"1-0.1.1,2-0.1.2"),
        FULL_TOKEN_PREFIX + _b64(b"deadbeef0000;1-0.1.1,2-0.1.2"),  # no MAC at all
        FULL_TOKEN_PREFIX + _b64(b"deadbeef0000;1-0.1.1,2-0.1.2") + ".",
        "v3." + _b64(b"deadbeef0000;1-0.1.1,2-0.1.2") + "." + _b64(b"\0" * 16),
        FULL_TOKEN_PREFIX + "not base64!." + _b64(b"\0" * 16),
        FULL_TOKEN_PREFIX + _b64(b"\xff\xfe;\xff") + "." + _b64(b"\0" * 16),  # not UTF-8
        FULL_TOKEN_PREFIX + "A" * 400,  # longer than any token of two partitions
    ],
    ids=["empty", "v1-ids", "v1-anchors", "no-mac", "empty-mac", "v3", "not-base64", "not-utf8", "too-long"],
)
def test_earlier_formats_and_garbage_are_refused(token: str) -> None:
    _refused(lambda: _resume(Tokens(SECRET, 2), token))


def test_the_check_returns_the_read_anchors_only_once_both_identity_and_mac_match() -> None:
    tokens = Tokens(SECRET, 1)
    signed = read_token(tokens.issue([Anchor((3, 1), 9, 3)]), 1)
    assert tokens.check(signed).anchors == [Anchor((3, 1), 9, 3)]
    _refused(lambda: tokens.check(SignedToken(signed.body, b"000000000000", signed.anchors, signed.mac)))
    _refused(lambda: tokens.check(SignedToken(signed.body, signed.identity, signed.anchors, signed.mac[:-1])))


def test_deployments_differ_in_identity() -> None:
    assert Tokens(SECRET, 1).identity != Tokens(OTHER_SECRET, 1).identity
    assert Tokens(SECRET, 1).identity == Tokens(SECRET, 16).identity
