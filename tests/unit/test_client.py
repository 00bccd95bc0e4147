"""profilemesh.client's tables, without a cluster: every documented reason has its class, and the policy."""

from __future__ import annotations

import re
from pathlib import Path

import grpc

from profilemesh.client import errors, policy
from profilemesh.client.errors import OutcomeUnknown, ProfilemeshError, Unavailable

API_PAGE = Path(__file__).resolve().parents[2] / "docs" / "api.md"


def test_every_reason_the_api_page_lists_has_its_class() -> None:
    text = API_PAGE.read_text()
    listed = text[text.index("the message: PROFILE_NOT_FOUND") : text.index("an INVALID_ARGUMENT also carries")]
    reasons = set(re.findall(r"\b[A-Z][A-Z_]{5,}\b", listed)) - {"OUTCOME"}
    assert reasons == set(errors.BY_REASON)


def test_a_change_is_retried_only_where_nothing_ran() -> None:
    def unavailable(reason: str, message: str = "x") -> ProfilemeshError:
        return errors.BY_REASON.get(reason, Unavailable)(message, code=grpc.StatusCode.UNAVAILABLE, reason=reason)

    for reason in ("NO_REPLICA", "PARTITION_UNAVAILABLE", "CLUSTER_UNAVAILABLE"):
        assert policy.retryable(policy.Kind.CHANGE, unavailable(reason))
    assert policy.retryable(policy.Kind.CHANGE, unavailable("", "failed to connect to all addresses; ..."))
    for error in (unavailable("OUTCOME_UNKNOWN"), unavailable("", "Socket closed")):
        assert not policy.retryable(policy.Kind.CHANGE, error)
        assert isinstance(policy.final(policy.Kind.CHANGE, error), OutcomeUnknown)
        assert policy.retryable(policy.Kind.READ, error)
