"""ProfileService and ReportingService through their gRPC stubs, and the gateway's status mapping.

The gRPC API is the contract (protos/); these tests hold it to the status codes and messages of
docs/architecture.md, and check that the gateway turns each status into the HTTP code grpc-gateway would.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import grpc
import pytest
from redis.cluster import RedisCluster

from common.storage import keys
from localdev.system import System
from profilemesh.profile.v1 import profile_pb2, profile_pb2_grpc
from profilemesh.reporting.v1 import reporting_pb2, reporting_pb2_grpc
from tests.conftest import PARTITIONS, events_of
from tests.helpers import http_call, status_details, wait_until

TIMEOUT_S = 5
AGGREGATOR_GROUP = "aggregator"  # Settings.aggregator_group; the test settings keep the default


def _id(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq)


def aggregated(client: RedisCluster, user: str) -> Callable[[], bool]:
    """A condition: the aggregator has applied every event written so far on the user's partition.

    Waiting for a score to reach a value can pass on an intermediate state (one of three reads
    counted); waiting for the group to pass the stream's last id cannot.
    """
    stream = keys.events_key(keys.partition_of(user, PARTITIONS))
    target = _id(client.xinfo_stream(stream)["last-generated-id"])

    def done() -> bool:
        group = next(g for g in client.xinfo_groups(stream) if g["name"] == AGGREGATOR_GROUP)
        if _id(group["last-delivered-id"]) < target:
            return False
        pending = client.xpending(stream, AGGREGATOR_GROUP)
        return pending["pending"] == 0 or _id(pending["min"]) > target

    return done


def code_and_details(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value.code(), caught.value.details()


# --- ProfileService -------------------------------------------------------------------------------


def test_create_get_update_delete(
    profile_stub: profile_pb2_grpc.ProfileServiceStub, redis_client: RedisCluster, audit: str, unique: str
) -> None:
    """The whole life of a profile, with one event per successful operation and none per failed one."""
    user = f"{unique}.ana@example.com"
    created = profile_stub.CreateProfile(
        profile_pb2.CreateProfileRequest(user=user, fields={"email": "ana@example.com", "name": "Ana"}),
        timeout=TIMEOUT_S,
    )
    assert created.message == f"Profile created for: {user}"

    profile = profile_stub.GetProfile(profile_pb2.GetProfileRequest(user=user), timeout=TIMEOUT_S)
    assert profile.user == user
    assert dict(profile.fields) == {"email": "ana@example.com", "name": "Ana"}

    updated = profile_stub.UpdateProfile(
        profile_pb2.UpdateProfileRequest(user=user, fields={"name": "Ana B.", "city": "Porto"}), timeout=TIMEOUT_S
    )
    assert updated.message == f"Profile updated for {user}"
    # PATCH semantics: the field not named in the update keeps its value.
    profile = profile_stub.GetProfile(profile_pb2.GetProfileRequest(user=user), timeout=TIMEOUT_S)
    assert dict(profile.fields) == {"email": "ana@example.com", "name": "Ana B.", "city": "Porto"}
    assert redis_client.hgetall(keys.profile_key(user, PARTITIONS)) == dict(profile.fields)

    deleted = profile_stub.DeleteProfile(profile_pb2.DeleteProfileRequest(user=user), timeout=TIMEOUT_S)
    assert deleted.message == f"Profile deleted for {user}"
    assert not redis_client.exists(keys.profile_key(user, PARTITIONS))
    code, details = code_and_details(
        lambda: profile_stub.GetProfile(profile_pb2.GetProfileRequest(user=user), timeout=TIMEOUT_S)
    )
    assert (code, details) == (grpc.StatusCode.NOT_FOUND, f"Profile not found for {user}")

    assert [kind for _, kind in events_of(redis_client, user)] == ["create", "read", "update", "read", "delete"]


def test_create_existing_is_already_exists_and_changes_nothing(
    profile_stub: profile_pb2_grpc.ProfileServiceStub, redis_client: RedisCluster, audit: str, unique: str
) -> None:
    user = f"{unique}-dup"
    profile_stub.CreateProfile(profile_pb2.CreateProfileRequest(user=user, fields={"a": "1"}), timeout=TIMEOUT_S)
    code, details = code_and_details(
        lambda: profile_stub.CreateProfile(
            profile_pb2.CreateProfileRequest(user=user, fields={"a": "2", "b": "2"}), timeout=TIMEOUT_S
        )
    )
    assert (code, details) == (grpc.StatusCode.ALREADY_EXISTS, "Profile exists")
    assert redis_client.hgetall(keys.profile_key(user, PARTITIONS)) == {"a": "1"}
    assert [kind for _, kind in events_of(redis_client, user)] == ["create"]


@pytest.mark.parametrize("operation", ["get", "update", "delete"])
def test_missing_profile_is_not_found(
    profile_stub: profile_pb2_grpc.ProfileServiceStub,
    redis_client: RedisCluster,
    audit: str,
    unique: str,
    operation: str,
) -> None:
    user = f"{unique}_nobody"
    calls = {
        "get": lambda: profile_stub.GetProfile(profile_pb2.GetProfileRequest(user=user), timeout=TIMEOUT_S),
        "update": lambda: profile_stub.UpdateProfile(
            profile_pb2.UpdateProfileRequest(user=user, fields={"a": "b"}), timeout=TIMEOUT_S
        ),
        "delete": lambda: profile_stub.DeleteProfile(profile_pb2.DeleteProfileRequest(user=user), timeout=TIMEOUT_S),
    }
    assert code_and_details(calls[operation]) == (grpc.StatusCode.NOT_FOUND, f"Profile not found for {user}")
    # A failed operation writes nothing: an update must not create the profile, nothing is streamed.
    assert not redis_client.exists(keys.profile_key(user, PARTITIONS))
    assert events_of(redis_client, user) == []


INVALID_CREATES = {
    "bad user": ("-starts-with-dash", {"a": "b"}, "user '-starts-with-dash' is invalid"),
    "empty user": ("", {"a": "b"}, "user '' is invalid"),
    "long user": ("u" * 129, {"a": "b"}, "user 'uuuu"),
    "user with space": ("a b", {"a": "b"}, "user 'a b' is invalid"),
    "reserved field": ("{u}", {"_id": "x"}, "field name '_id' is invalid"),
    "dotted field": ("{u}", {".x": "x"}, "field name '.x' is invalid"),
    "field with space": ("{u}", {"a b": "x"}, "field name 'a b' is invalid"),
    "long field": ("{u}", {"f" * 65: "x"}, "field name 'ffff"),
    "too many fields": ("{u}", {f"f{i}": "x" for i in range(65)}, "too many fields: 65, at most 64"),
    "large value": ("{u}", {"bio": "x" * 4097}, "field 'bio' is 4097 bytes, at most 4096"),
    "large multibyte value": ("{u}", {"bio": "é" * 2049}, "field 'bio' is 4098 bytes, at most 4096"),
    "no fields": ("{u}", {}, "fields must not be empty"),
}


@pytest.mark.parametrize("rpc", ["create", "update"])
@pytest.mark.parametrize("case", INVALID_CREATES.values(), ids=INVALID_CREATES.keys())
def test_invalid_arguments_name_the_offending_part(
    profile_stub: profile_pb2_grpc.ProfileServiceStub,
    redis_client: RedisCluster,
    audit: str,
    unique: str,
    rpc: str,
    case: tuple[str, dict[str, str], str],
) -> None:
    user_template, fields, expected = case
    user = user_template.replace("{u}", unique)
    if rpc == "update" and user == unique:
        # An existing profile, so that only the arguments can be what fails.
        profile_stub.CreateProfile(
            profile_pb2.CreateProfileRequest(user=user, fields={"keep": "me"}), timeout=TIMEOUT_S
        )
    request_class = profile_pb2.CreateProfileRequest if rpc == "create" else profile_pb2.UpdateProfileRequest
    method = profile_stub.CreateProfile if rpc == "create" else profile_stub.UpdateProfile
    before = events_of(redis_client, user)

    code, details = code_and_details(lambda: method(request_class(user=user, fields=fields), timeout=TIMEOUT_S))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert expected in details
    assert len(details) < 300, "an error message must not echo a huge input"
    assert events_of(redis_client, user) == before
    if rpc == "update" and user == unique:
        assert redis_client.hgetall(keys.profile_key(user, PARTITIONS)) == {"keep": "me"}


@pytest.mark.parametrize("user", ["", "-x", "a/b", "u" * 129])
def test_get_and_delete_reject_invalid_users(profile_stub: profile_pb2_grpc.ProfileServiceStub, user: str) -> None:
    for call in (
        lambda: profile_stub.GetProfile(profile_pb2.GetProfileRequest(user=user), timeout=TIMEOUT_S),
        lambda: profile_stub.DeleteProfile(profile_pb2.DeleteProfileRequest(user=user), timeout=TIMEOUT_S),
    ):
        code, details = code_and_details(call)
        assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("user ")


def test_limits_are_inclusive(profile_stub: profile_pb2_grpc.ProfileServiceStub, unique: str) -> None:
    """The largest valid request: a 128-character user, 64 fields with 64-character names, 4096-byte values."""
    user = (unique + "u" * 128)[:128]
    fields = {(f"f{i:02d}" + "n" * 64)[:64]: "v" * 4096 for i in range(64)}
    profile_stub.CreateProfile(profile_pb2.CreateProfileRequest(user=user, fields=fields), timeout=TIMEOUT_S)
    assert dict(profile_stub.GetProfile(profile_pb2.GetProfileRequest(user=user), timeout=TIMEOUT_S).fields) == fields


# --- The gateway's mapping of gRPC statuses to HTTP -----------------------------------------------


def test_gateway_maps_statuses_to_http(system: System, unique: str) -> None:
    port = system.gateway_port
    user = f"{unique}@gw"
    assert http_call(port, "POST", f"/profile/{user}", {"a": "1", "b": "1"}) == (
        201,
        {"message": f"Profile created for: {user}"},
    )
    status, body = http_call(port, "POST", f"/profile/{user}", {"a": "2"})
    assert (status, body["message"]) == (409, "Profile exists")
    assert http_call(port, "PATCH", f"/profile/{user}", {"b": "2"}) == (200, {"message": f"Profile updated for {user}"})
    assert http_call(port, "GET", f"/profile/{user}") == (200, {"a": "1", "b": "2"})
    assert http_call(port, "DELETE", f"/profile/{user}") == (200, {"message": f"Profile deleted for {user}"})
    for method, body in (("GET", None), ("PATCH", {"a": "3"}), ("DELETE", None)):
        status, reply = http_call(port, method, f"/profile/{user}", body)
        assert (status, reply["message"]) == (404, f"Profile not found for {user}")

    status, body = http_call(port, "POST", f"/profile/{user}", {"_id": "x"})
    assert status == 400 and "field name '_id' is invalid" in body["message"]
    status, body = http_call(port, "GET", "/reporting/profileStats/0")
    assert status == 400 and "limit must be an integer from 1 to 1000" in body["message"]


def rich_status(call: Callable[[], object]) -> tuple[grpc.StatusCode, dict[str, Any]]:
    """The status of a failing call and its google.rpc details, by type name."""
    with pytest.raises(grpc.RpcError) as caught:
        call()
    failed = cast(grpc.Call, caught.value)  # what a failed call raises is both an RpcError and a Call
    return failed.code(), status_details(caught.value)


def test_errors_carry_reason_and_field_violations(
    profile_stub: profile_pb2_grpc.ProfileServiceStub,
    reporting_stub: reporting_pb2_grpc.ReportingServiceStub,
    unique: str,
) -> None:
    """What a program branches on: ErrorInfo's stable reason, and for INVALID_ARGUMENT the field at fault."""
    code, details = rich_status(
        lambda: profile_stub.GetProfile(profile_pb2.GetProfileRequest(user=unique), timeout=TIMEOUT_S)
    )
    assert code == grpc.StatusCode.NOT_FOUND
    assert (details["ErrorInfo"].reason, details["ErrorInfo"].domain) == ("PROFILE_NOT_FOUND", "profilemesh")

    bad = profile_pb2.UpdateProfileRequest(user=unique, fields={"ok": "x", "bio": "x" * 4097})
    code, details = rich_status(lambda: profile_stub.UpdateProfile(bad, timeout=TIMEOUT_S))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details["ErrorInfo"].reason == "INVALID_ARGUMENT"
    (violation,) = details["BadRequest"].field_violations
    assert (violation.field, violation.description) == ("fields.bio", "field 'bio' is 4097 bytes, at most 4096")

    code, details = rich_status(
        lambda: reporting_stub.GetTopProfiles(reporting_pb2.GetTopProfilesRequest(limit=0), timeout=TIMEOUT_S)
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in details["BadRequest"].field_violations] == ["limit"]


# --- ReportingService -----------------------------------------------------------------------------


@pytest.mark.parametrize("limit", [0, -1, 1001, 2**31 - 1])
def test_top_profiles_limit_out_of_range(reporting_stub: reporting_pb2_grpc.ReportingServiceStub, limit: int) -> None:
    code, details = code_and_details(
        lambda: reporting_stub.GetTopProfiles(reporting_pb2.GetTopProfilesRequest(limit=limit), timeout=TIMEOUT_S)
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details == f"limit must be an integer from 1 to 1000, got {limit}"


def test_profile_stats_and_top_profiles(
    profile_stub: profile_pb2_grpc.ProfileServiceStub,
    reporting_stub: reporting_pb2_grpc.ReportingServiceStub,
    redis_client: RedisCluster,
    unique: str,
) -> None:
    reader, unread = f"{unique}-reader", f"{unique}-unread"
    for user in (reader, unread):
        profile_stub.CreateProfile(profile_pb2.CreateProfileRequest(user=user, fields={"a": "b"}), timeout=TIMEOUT_S)
    for _ in range(4):
        profile_stub.GetProfile(profile_pb2.GetProfileRequest(user=reader), timeout=TIMEOUT_S)
    wait_until(aggregated(redis_client, reader), what="the aggregator to apply the reads")

    stats = reporting_stub.GetProfileStats(reporting_pb2.GetProfileStatsRequest(user=reader), timeout=TIMEOUT_S)
    assert (stats.user, stats.reads) == (reader, 4)
    # Created but never read, and never created at all: both zero reads, not an error.
    for user in (unread, f"{unique}-never"):
        stats = reporting_stub.GetProfileStats(reporting_pb2.GetProfileStatsRequest(user=user), timeout=TIMEOUT_S)
        assert (stats.user, stats.reads) == (user, 0)
    code, _ = code_and_details(
        lambda: reporting_stub.GetProfileStats(reporting_pb2.GetProfileStatsRequest(user="-x"), timeout=TIMEOUT_S)
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT

    # Other tests share this cluster, so check the ranking's rules rather than its exact content.
    def ranking() -> list[tuple[str, int]]:
        top = reporting_stub.GetTopProfiles(reporting_pb2.GetTopProfilesRequest(limit=1000), timeout=TIMEOUT_S)
        return [(row.user, row.score) for row in top.results]

    # The top list follows the counts by a copy into its index (docs/architecture.md, "The top list's index").
    wait_until(lambda: dict(ranking()).get(reader, 4) == 4, what="the top list to follow the counts")
    ranked = ranking()
    assert len(ranked) <= 1000
    assert ranked == sorted(ranked, key=lambda item: (-item[1], item[0]))
    assert all(score > 0 for _, score in ranked)
    assert unread not in dict(ranked)
    if reader in dict(ranked):
        assert dict(ranked)[reader] == 4
    top_one = reporting_stub.GetTopProfiles(reporting_pb2.GetTopProfilesRequest(limit=1), timeout=TIMEOUT_S).results
    assert [(row.user, row.score) for row in top_one] == ranked[:1]


def test_operation_totals_count_what_we_did(
    profile_stub: profile_pb2_grpc.ProfileServiceStub,
    reporting_stub: reporting_pb2_grpc.ReportingServiceStub,
    unique: str,
) -> None:
    def totals() -> dict[str, int]:
        reply = reporting_stub.GetOperationTotals(reporting_pb2.GetOperationTotalsRequest(), timeout=TIMEOUT_S)
        return {kind: getattr(reply, kind) for kind in keys.EVENT_TYPES}

    before = totals()
    done = {"create": 3, "read": 5, "update": 2, "delete": 1}
    users = [f"{unique}-{i}" for i in range(3)]
    for user in users:
        profile_stub.CreateProfile(profile_pb2.CreateProfileRequest(user=user, fields={"a": "b"}), timeout=TIMEOUT_S)
    for i in range(5):
        profile_stub.GetProfile(profile_pb2.GetProfileRequest(user=users[i % 3]), timeout=TIMEOUT_S)
    for user in users[:2]:
        profile_stub.UpdateProfile(profile_pb2.UpdateProfileRequest(user=user, fields={"a": "c"}), timeout=TIMEOUT_S)
    profile_stub.DeleteProfile(profile_pb2.DeleteProfileRequest(user=users[0]), timeout=TIMEOUT_S)
    # Failed operations are not operations: they add nothing to the totals.
    with pytest.raises(grpc.RpcError):
        profile_stub.CreateProfile(
            profile_pb2.CreateProfileRequest(user=users[1], fields={"a": "b"}), timeout=TIMEOUT_S
        )
    with pytest.raises(grpc.RpcError):
        profile_stub.GetProfile(profile_pb2.GetProfileRequest(user=users[0]), timeout=TIMEOUT_S)

    # Other tests' events may still be arriving, so the totals grow by at least what we did.
    wait_until(
        lambda: all(totals()[kind] - before[kind] >= count for kind, count in done.items()),
        what="the totals to count our operations",
    )


def test_recreated_profile_starts_from_zero(
    profile_stub: profile_pb2_grpc.ProfileServiceStub,
    reporting_stub: reporting_pb2_grpc.ReportingServiceStub,
    redis_client: RedisCluster,
    unique: str,
) -> None:
    user = f"{unique}+again"

    def reads() -> int:
        return reporting_stub.GetProfileStats(reporting_pb2.GetProfileStatsRequest(user=user), timeout=TIMEOUT_S).reads

    profile_stub.CreateProfile(profile_pb2.CreateProfileRequest(user=user, fields={"v": "1"}), timeout=TIMEOUT_S)
    for _ in range(3):
        profile_stub.GetProfile(profile_pb2.GetProfileRequest(user=user), timeout=TIMEOUT_S)
    # No waiting in between: the aggregator must get the order right however it batches.
    profile_stub.DeleteProfile(profile_pb2.DeleteProfileRequest(user=user), timeout=TIMEOUT_S)
    profile_stub.CreateProfile(profile_pb2.CreateProfileRequest(user=user, fields={"v": "2"}), timeout=TIMEOUT_S)
    assert dict(profile_stub.GetProfile(profile_pb2.GetProfileRequest(user=user), timeout=TIMEOUT_S).fields) == {
        "v": "2"
    }

    wait_until(aggregated(redis_client, user), what="the aggregator to apply every event")
    assert reads() == 1

    def top_score() -> int:
        top = reporting_stub.GetTopProfiles(reporting_pb2.GetTopProfilesRequest(limit=1000), timeout=TIMEOUT_S).results
        return {row.user: row.score for row in top}.get(user, 1)

    # The top list follows the counts by a copy into its index (docs/architecture.md, "The top list's index").
    wait_until(lambda: top_score() == 1, what="the top list to follow the counts")

    # And once more after the first life was fully counted.
    profile_stub.GetProfile(profile_pb2.GetProfileRequest(user=user), timeout=TIMEOUT_S)
    profile_stub.GetProfile(profile_pb2.GetProfileRequest(user=user), timeout=TIMEOUT_S)
    wait_until(aggregated(redis_client, user), what="the aggregator to apply the reads")
    assert reads() == 3
    profile_stub.DeleteProfile(profile_pb2.DeleteProfileRequest(user=user), timeout=TIMEOUT_S)
    profile_stub.CreateProfile(profile_pb2.CreateProfileRequest(user=user, fields={"v": "3"}), timeout=TIMEOUT_S)
    wait_until(aggregated(redis_client, user), what="the aggregator to apply the delete")
    assert reads() == 0
    profile_stub.GetProfile(profile_pb2.GetProfileRequest(user=user), timeout=TIMEOUT_S)
    wait_until(aggregated(redis_client, user), what="the aggregator to apply the read")
    assert reads() == 1
