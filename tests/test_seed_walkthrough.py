"""The seed's walk-through through the gateway: the same paths, the same bodies."""

from __future__ import annotations

from typing import Any

from localdev.system import System
from tests.helpers import http_call, wait_until

SEED_USERS = {
    "zach": {"email": "zach@example.com", "username": "Zach"},
    "roberto": {"email": "roberto@example.com", "username": "Roberto"},
    "akua": {"email": "akua@example.com", "username": "Akua"},
    "ana": {"email": "ana@example.com", "username": "Ana"},
}


def test_seed_walkthrough(fresh_system: System) -> None:
    """On an empty cluster, so that the top three are the seed's users."""
    walk_through(fresh_system.gateway_port)


def walk_through(port: int) -> None:
    """The seed's walk-through against the gateway on `port` of a system on an empty cluster (also run on the
    secured system and against the containers)."""
    for user, fields in SEED_USERS.items():
        assert http_call(port, "POST", f"/profile/{user}", fields) == (201, {"message": f"Profile created for: {user}"})

    assert http_call(port, "GET", "/profile/zach") == (200, {"email": "zach@example.com", "username": "Zach"})
    assert http_call(port, "DELETE", "/profile/zach") == (200, {"message": "Profile deleted for zach"})

    for user, reads in (("ana", 8), ("roberto", 2), ("akua", 1)):
        for _ in range(reads):
            assert http_call(port, "GET", f"/profile/{user}")[0] == 200

    expected = {"results": [{"user": "ana", "score": 8}, {"user": "roberto", "score": 2}, {"user": "akua", "score": 1}]}
    wait_until(lambda: http_call(port, "GET", "/reporting/profileStats/3") == (200, expected), what="the seed's stats")
    # zach was read before being deleted: the delete removed him from the statistics.
    status, body = http_call(port, "GET", "/reporting/profileStats/1000")
    assert status == 200 and "zach" not in [row["user"] for row in body["results"]]


def error_info_reason(body: dict[str, Any]) -> str:
    """The stable reason of an error body's google.rpc.ErrorInfo detail."""
    (info,) = [detail for detail in body["details"] if detail["@type"] == "type.googleapis.com/google.rpc.ErrorInfo"]
    assert info["domain"] == "profilemesh"
    return str(info["reason"])


def test_seed_error_bodies(system: System, unique: str) -> None:
    """The seed's status and message, and (added, so a client need not parse the message) the reason."""
    port = system.gateway_port
    assert http_call(port, "POST", f"/profile/{unique}", {"email": "a@example.com"})[0] == 201
    status, body = http_call(port, "POST", f"/profile/{unique}", {"email": "b@example.com"})
    assert (status, body["message"], error_info_reason(body)) == (409, "Profile exists", "PROFILE_EXISTS")
    assert set(body) == {"message", "details"}
    missing = [("GET", None), ("DELETE", None), ("PATCH", {"a": "b"})]
    for method, fields in missing:
        status, body = http_call(port, method, "/profile/nobody", fields)
        assert (status, body["message"]) == (404, "Profile not found for nobody")
        assert error_info_reason(body) == "PROFILE_NOT_FOUND"
