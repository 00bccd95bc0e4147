"""What the clients return: small frozen dataclasses rather than the generated messages.

They are plain Python (a `dict` of fields, a `datetime`), typed without the protobuf stubs, compare and
print as values, and don't change when a message gains a field the client doesn't surface yet.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from profilemesh.client.errors import ProfilemeshError


@dataclass(frozen=True, slots=True)
class Profile:
    user: str
    fields: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ProfileEvent:
    """One change from the feed; `resume_token` resumes right after it (persist it once you handled it)."""

    user: str
    type: str  # create, update, delete (read, when asked for)
    time: datetime
    partition: int
    id: str
    resume_token: str


@dataclass(frozen=True, slots=True)
class ProfileScore:
    user: str
    score: int


@dataclass(frozen=True, slots=True)
class OperationTotals:
    create: int = 0
    read: int = 0
    update: int = 0
    delete: int = 0


@dataclass(frozen=True, slots=True)
class Leaderboard:
    """One message of WatchTopProfiles: the top list and the totals, as they are now."""

    results: list[ProfileScore]
    totals: OperationTotals


@dataclass(frozen=True, slots=True)
class BatchResult:
    """get_many's answer for one user: the profile, or the typed error GetProfile would have raised."""

    user: str
    profile: Profile | None = None
    error: ProfilemeshError | None = None
