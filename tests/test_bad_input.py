"""Bad input never reaches the cluster and never returns 500 (docs/architecture.md, the REST contract).

Every case goes through the gateway, gets its 4xx with a JSON body whose "message" says why,
and leaves the cluster exactly as it was. The module runs on a system of its own, where
nothing but these requests and the aggregator touch the cluster, so "exactly as it was" can
be checked over the whole cluster: no new key, no new event in any stream, the existing
profile unchanged.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from redis.cluster import RedisCluster

from common.storage import keys
from localdev.system import System
from tests.conftest import PARTITIONS, events_of
from tests.helpers import http_call, on_every_partition, top_index_settled, wait_until

EXISTING = "existing"  # a profile the module creates first, so updates of it can be attempted
EXISTING_FIELDS = {"email": "existing@example.com", "name": "Existing"}
NEW = "newbie"  # a user that must never come to exist
AUDIT_GROUP = "bad-input-audit"


@dataclass(frozen=True)
class Snapshot:
    """Everything bad input could change: the key count, profile keys, events ever added, the profile."""

    keys: int
    profiles: frozenset[str]
    events_added: tuple[int, ...]
    existing: dict[str, str]


@pytest.fixture(scope="module")
def settled(fresh_system: System, fresh_client: RedisCluster) -> Iterator[None]:
    """The module's cluster with one profile, once the aggregator has nothing left to write.

    An audit group that reads nothing keeps every event in the streams, so events_of sees them all.
    """
    streams = [keys.events_key(p) for p in range(PARTITIONS)]

    def aggregator_groups_exist() -> bool:
        return all(
            fresh_client.exists(s) and any(g["name"] == "aggregator" for g in fresh_client.xinfo_groups(s))
            for s in streams
        )

    wait_until(aggregator_groups_exist, what="the aggregator's consumer groups")
    on_every_partition(
        fresh_client, PARTITIONS, lambda pipe, p: pipe.xgroup_create(keys.events_key(p), AUDIT_GROUP, "$")
    )
    assert http_call(fresh_system.gateway_port, "POST", f"/profile/{EXISTING}", EXISTING_FIELDS)[0] == 201
    partition = keys.partition_of(EXISTING, PARTITIONS)
    wait_until(
        lambda: fresh_client.hget(keys.totals_key(partition), "create") == "1",
        what="the aggregator to count the create",
    )
    # Every partition's first take makes its top list outbox (the aggregator's, not a request's key): at 4,096
    # partitions those go on after the system's start, and the key counts compared below must not see them.
    wait_until(lambda: top_index_settled(fresh_client, PARTITIONS), what="every partition indexed")
    yield
    on_every_partition(fresh_client, PARTITIONS, lambda pipe, p: pipe.xgroup_destroy(keys.events_key(p), AUDIT_GROUP))


def snapshot(fresh_client: RedisCluster) -> Snapshot:
    return Snapshot(
        keys=fresh_client.dbsize(),
        profiles=frozenset(fresh_client.scan_iter(match="profile:*", count=1000)),
        events_added=tuple(
            info["entries-added"]
            for info in on_every_partition(
                fresh_client, PARTITIONS, lambda pipe, p: pipe.xinfo_stream(keys.events_key(p))
            )
        ),
        existing=fresh_client.hgetall(keys.profile_key(EXISTING, PARTITIONS)),
    )


def raw_request(port: int, method: str, path: str, body: bytes | None) -> tuple[int, dict[str, str], Any]:
    """Like http_call, but returns the headers too (405 must say what is Allowed)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        connection.request(method, path, body=body, headers=headers)
        reply = connection.getresponse()
        payload = reply.read()
        assert reply.getheader("Content-Type", "").startswith("application/json"), payload[:200]
        return reply.status, dict(reply.getheaders()), json.loads(payload)
    finally:
        connection.close()


def assert_rejected(
    system: System,
    fresh_client: RedisCluster,
    method: str,
    path: str,
    status: int,
    *,
    body: Any = None,
    raw: bytes | None = None,
    users: tuple[str, ...] = (),
    says: str = "",
) -> dict[str, Any]:
    """The request gets `status` with a JSON message, and the cluster is exactly as before."""
    before = snapshot(fresh_client)
    events_before = {user: events_of(fresh_client, user) for user in (*users, EXISTING)}
    got, reply = http_call(system.gateway_port, method, path, body, raw=raw)
    assert got == status, reply
    assert isinstance(reply, dict) and isinstance(reply.get("message"), str) and reply["message"].strip(), reply
    assert says in reply["message"]
    assert len(reply["message"]) < 500, "an error message must not echo a huge input"
    assert snapshot(fresh_client) == before
    for user in users:
        assert not fresh_client.exists(keys.profile_key(user, PARTITIONS)), user
    assert {user: events_of(fresh_client, user) for user in (*users, EXISTING)} == events_before
    return reply


pytestmark = pytest.mark.usefixtures("settled")

# --- Bodies: on every route that takes one, for a new user (create) and the existing one ---------

BODY_ROUTES = [("POST", NEW), ("POST", EXISTING), ("PATCH", EXISTING), ("PATCH", NEW)]
BODY_ROUTE_IDS = [f"{method} {user}" for method, user in BODY_ROUTES]

MALFORMED_BODIES: dict[str, tuple[bytes, str]] = {
    "empty": (b"", "request body is empty"),
    "whitespace": (b" \r\n\t ", "request body is empty"),
    "truncated": (b'{"email": ', "not valid JSON"),
    "not json": (b"email=a@example.com", "not valid JSON"),
    "trailing garbage": (b'{"email": "a@example.com"} x', "not valid JSON"),
    "single quotes": (b"{'email': 'a'}", "not valid JSON"),
    "not utf-8": (b'{"email": "\xff\xfe"}', "not valid JSON"),
    "NaN literal": (b'{"email": NaN}', "must be a string"),
    "array": (b'[{"email": "a@example.com"}]', "must be a JSON object, got list"),
    "string": (b'"email"', "must be a JSON object, got str"),
    "number": (b"42", "must be a JSON object, got int"),
    "null": (b"null", "must be a JSON object"),
    "true": (b"true", "must be a JSON object, got bool"),
    "deeply nested": (b"[" * 60000, "nests too deeply"),
    "deeply nested object": (b'{"a": ' * 10000, "nests too deeply"),
    "huge number": (b'{"a": ' + b"1" * 5000 + b"}", "a number is too long"),
    "huge number alone": (b"9" * 5000, "a number is too long"),
    "unpaired surrogate value": (b'{"email": "\\ud800"}', "Unpaired surrogate"),
    "unpaired surrogate name": (b'{"\\udc00": "a"}', "Unpaired surrogate"),
}


@pytest.mark.parametrize(("method", "user"), BODY_ROUTES, ids=BODY_ROUTE_IDS)
@pytest.mark.parametrize("case", MALFORMED_BODIES.values(), ids=MALFORMED_BODIES.keys())
def test_malformed_bodies(
    fresh_system: System, fresh_client: RedisCluster, method: str, user: str, case: tuple[bytes, str]
) -> None:
    raw, says = case
    assert_rejected(fresh_system, fresh_client, method, f"/profile/{user}", 400, raw=raw, users=(NEW,), says=says)


INVALID_FIELDS: dict[str, tuple[Any, str]] = {
    "int value": ({"age": 42}, "field 'age' must be a string, got int"),
    "float value": ({"age": 1.5}, "field 'age' must be a string, got float"),
    "bool value": ({"admin": True}, "field 'admin' must be a string, got bool"),
    "null value": ({"email": None}, "field 'email' must be a string, got NoneType"),
    "object value": ({"address": {"city": "Porto"}}, "field 'address' must be a string, got dict"),
    "array value": ({"tags": ["a", "b"]}, "field 'tags' must be a string, got list"),
    "one bad among good": ({"email": "a@example.com", "age": 42}, "field 'age' must be a string"),
    "no fields": ({}, "fields must not be empty"),
    "reserved _id": ({"_id": "x"}, "field name '_id' is invalid"),
    "leading dot": ({".x": "x"}, "field name '.x' is invalid"),
    "leading dash": ({"-x": "x"}, "field name '-x' is invalid"),
    "space": ({"a b": "x"}, "field name 'a b' is invalid"),
    "empty name": ({"": "x"}, "field name '' is invalid"),
    "colon": ({"a:b": "x"}, "field name 'a:b' is invalid"),
    "slash": ({"a/b": "x"}, "field name 'a/b' is invalid"),
    "non-ascii name": ({"café": "x"}, "field name 'café' is invalid"),
    "65-char name": ({"n" * 65: "x"}, "field name 'nnnn"),
    "4097-byte value": ({"bio": "x" * 4097}, "field 'bio' is 4097 bytes, at most 4096"),
    "4098-byte multibyte value": ({"bio": "é" * 2049}, "field 'bio' is 4098 bytes, at most 4096"),
    "65 fields": ({f"f{i}": "x" for i in range(65)}, "too many fields: 65, at most 64"),
}


@pytest.mark.parametrize(("method", "user"), BODY_ROUTES, ids=BODY_ROUTE_IDS)
@pytest.mark.parametrize("case", INVALID_FIELDS.values(), ids=INVALID_FIELDS.keys())
def test_invalid_fields(
    fresh_system: System, fresh_client: RedisCluster, method: str, user: str, case: tuple[Any, str]
) -> None:
    body, says = case
    assert_rejected(fresh_system, fresh_client, method, f"/profile/{user}", 400, body=body, users=(NEW,), says=says)


@pytest.mark.parametrize(("method", "user"), BODY_ROUTES, ids=BODY_ROUTE_IDS)
@pytest.mark.parametrize("size", [64 * 1024 + 1, 200 * 1024])
def test_oversized_body(fresh_system: System, fresh_client: RedisCluster, method: str, user: str, size: int) -> None:
    body = b'{"bio": "' + b"x" * (size - len(b'{"bio": ""}')) + b'"}'
    assert len(body) == size
    assert_rejected(
        fresh_system, fresh_client, method, f"/profile/{user}", 413, raw=body, users=(NEW,), says="larger than 65536"
    )


# --- User names in the path, on every route that has one ------------------------------------------

BAD_USERS = {
    "leading dash": ("-x", "-x"),
    "leading dot": (".x", ".x"),
    "129 chars": ("u" * 129, "u" * 129),
    "encoded space": ("a%20b", "a b"),
    "encoded slash": ("a%2Fb", "a/b"),
    "encoded NUL": ("a%00", "a\x00"),
    "non-ascii": ("caf%C3%A9", "café"),
    "invalid utf-8": ("%FF", "%FF"),
    "colon": ("a:b", "a:b"),
    "quote": ("a'b", "a'b"),
}
USER_ROUTES = [
    ("POST", "/profile/{}", {"email": "a@example.com"}),
    ("PATCH", "/profile/{}", {"email": "a@example.com"}),
    ("GET", "/profile/{}", None),
    ("DELETE", "/profile/{}", None),
    ("GET", "/reporting/users/{}/stats", None),
]


@pytest.mark.parametrize(("method", "template", "body"), USER_ROUTES, ids=[f"{m} {t}" for m, t, _ in USER_ROUTES])
@pytest.mark.parametrize("case", BAD_USERS.values(), ids=BAD_USERS.keys())
def test_invalid_user_in_path(
    fresh_system: System, fresh_client: RedisCluster, method: str, template: str, body: Any, case: tuple[str, str]
) -> None:
    in_path, user = case
    assert_rejected(
        fresh_system, fresh_client, method, template.format(in_path), 400, body=body, users=(user,), says="is invalid"
    )


# --- The top-n route's n ---------------------------------------------------------------------------

BAD_LIMITS = {
    "0": ("0", "limit must be an integer from 1 to 1000, got 0"),
    "-1": ("-1", "limit must be an integer from 1 to 1000, got -1"),
    "1001": ("1001", "limit must be an integer from 1 to 1000, got 1001"),
    "abc": ("abc", "limit must be an integer, got 'abc'"),
    "1.5": ("1.5", "limit must be an integer, got '1.5'"),
    "1e3": ("1e3", "limit must be an integer"),
    "0x10": ("0x10", "limit must be an integer"),
    "underscore": ("1_000", "limit must be an integer"),
    "leading space": ("%203", "limit must be an integer"),
    "arabic-indic digit": ("%D9%A3", "limit must be an integer"),
    "beyond int32": ("99999999999", "limit must be an integer"),
    "5000 digits": ("1" * 5000, "limit must be an integer"),
}


@pytest.mark.parametrize("case", BAD_LIMITS.values(), ids=BAD_LIMITS.keys())
def test_invalid_top_n(fresh_system: System, fresh_client: RedisCluster, case: tuple[str, str]) -> None:
    n, says = case
    assert_rejected(fresh_system, fresh_client, "GET", f"/reporting/profileStats/{n}", 400, says=says)


# --- What a program reads: the field at fault, and a stable reason -----------------------------------

FIELD_VIOLATIONS = {
    "user in the path": ("GET", "/profile/-x", None, "user"),
    "user in the stats path": ("GET", "/reporting/users/a:b/stats", None, "user"),
    "limit out of range": ("GET", "/reporting/profileStats/0", None, "limit"),
    "limit not an integer": ("GET", "/reporting/profileStats/abc", None, "limit"),
    "empty body": ("POST", f"/profile/{NEW}", b"", "fields"),
    "body not JSON": ("PATCH", f"/profile/{EXISTING}", b"{", "fields"),
    "value not a string": ("POST", f"/profile/{NEW}", {"age": 42}, "fields.age"),
    "no fields": ("POST", f"/profile/{NEW}", {}, "fields"),
    "field name": ("PATCH", f"/profile/{EXISTING}", {"a b": "x"}, "fields"),
    "value too long": ("PATCH", f"/profile/{EXISTING}", {"bio": "x" * 4097}, "fields.bio"),
}


@pytest.mark.parametrize("case", FIELD_VIOLATIONS.values(), ids=FIELD_VIOLATIONS.keys())
def test_field_violations_name_the_field(
    fresh_system: System, fresh_client: RedisCluster, case: tuple[str, str, Any, str]
) -> None:
    """A 400 carries google.rpc details: ErrorInfo's reason and BadRequest's violation of the field at fault."""
    method, path, body, field = case
    raw = body if isinstance(body, bytes) else None
    reply = assert_rejected(
        fresh_system, fresh_client, method, path, 400, body=None if raw is not None else body, raw=raw, users=(NEW,)
    )
    by_type = {detail["@type"].rpartition("/")[2]: detail for detail in reply["details"]}
    assert by_type["google.rpc.ErrorInfo"] == {
        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
        "reason": "INVALID_ARGUMENT",
        "domain": "profilemesh",
    }
    assert by_type["google.rpc.BadRequest"]["fieldViolations"] == [{"field": field, "description": reply["message"]}]


# --- Paths and methods the API does not have -------------------------------------------------------

UNKNOWN_PATHS = [
    "/",
    "/profile",
    "/profile/",
    "/profiles/existing",
    "/profile/existing/",
    "/profile/existing/extra",
    "//profile/existing",
    "/reporting",
    "/reporting/profileStats",
    "/reporting/profileStats/",
    "/reporting/profileStats/3/extra",
    "/reporting/users/existing",
    "/v1/profile/existing",
    "/nope",
]


@pytest.mark.parametrize("method", ["GET", "POST", "DELETE"])
@pytest.mark.parametrize("path", UNKNOWN_PATHS)
def test_unknown_paths(fresh_system: System, fresh_client: RedisCluster, method: str, path: str) -> None:
    body = {"email": "a@example.com"} if method == "POST" else None
    assert_rejected(fresh_system, fresh_client, method, path, 404, body=body)


WRONG_METHODS = [
    ("PUT", "/profile/x", "DELETE,GET,PATCH,POST"),
    ("PUT", f"/profile/{EXISTING}", "DELETE,GET,PATCH,POST"),
    ("OPTIONS", f"/profile/{EXISTING}", "DELETE,GET,PATCH,POST"),
    ("POST", "/reporting/profileStats/3", "GET"),
    ("DELETE", "/reporting/profileStats/3", "GET"),
    ("PATCH", "/reporting/operationTotals", "GET"),
    ("POST", f"/reporting/users/{EXISTING}/stats", "GET"),
    ("POST", "/healthz", "GET"),
    ("DELETE", "/readyz", "GET"),
]


@pytest.mark.parametrize(("method", "path", "allowed"), WRONG_METHODS, ids=[f"{m} {p}" for m, p, _ in WRONG_METHODS])
def test_wrong_methods(fresh_system: System, fresh_client: RedisCluster, method: str, path: str, allowed: str) -> None:
    body = {"email": "changed@example.com"}
    assert_rejected(fresh_system, fresh_client, method, path, 405, body=body, users=("x",))
    status, headers, _ = raw_request(fresh_system.gateway_port, method, path, json.dumps(body).encode())
    assert status == 405 and sorted(headers["Allow"].split(",")) == sorted(allowed.split(","))


# --- The check itself sees writes (else every test above would pass vacuously) ---------------------


def test_the_check_notices_a_valid_write(fresh_system: System, fresh_client: RedisCluster) -> None:
    before = snapshot(fresh_client)
    assert http_call(fresh_system.gateway_port, "PATCH", f"/profile/{EXISTING}", {"name": "Changed"})[0] == 200
    after = snapshot(fresh_client)
    assert after.existing == {**EXISTING_FIELDS, "name": "Changed"}
    assert sum(after.events_added) == sum(before.events_added) + 1
    assert [kind for _, kind in events_of(fresh_client, EXISTING)][-1] == "update"
    assert http_call(fresh_system.gateway_port, "POST", "/profile/control", {"a": "b"})[0] == 201
    assert snapshot(fresh_client).profiles == before.profiles | {keys.profile_key("control", PARTITIONS)}
