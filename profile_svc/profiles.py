"""The profile domain: validated operations, each one script on the user's partition slot."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from common.errors import AlreadyExists, InvalidArgument, NotFound
from common.rpc.validation import check_fields, check_user
from common.storage import keys
from common.storage.cluster import Cluster, Confirm

SCRIPTS = Path(__file__).parent / "scripts"
# The most users one BatchGetProfiles may name: bounds a call's work and its reply's size.
MAX_BATCH = 1000


def _flatten(fields: dict[str, str]) -> list[str]:
    return [item for pair in fields.items() for item in pair]


def _profile_or_error(user: str, reply: Any) -> dict[str, str] | Exception:
    """A get_profile script's reply as the profile, or the error it stands for."""
    if isinstance(reply, Exception):
        return reply
    if reply is None:
        return NotFound(f"Profile not found for {user}")
    return {reply[i].decode(): reply[i + 1].decode() for i in range(0, len(reply), 2)}


def script_keys(user: str, partitions: int, generation: int = 0) -> list[str]:
    """The keys get_profile.lua, write_profile.lua and delete_profile.lua take, in their order."""
    partition = keys.partition_of(user, partitions)
    return [
        keys.profile_key(user, partitions, generation),
        keys.events_key(partition, generation),
        keys.wake_key(partition, generation),
    ]


class Profiles:
    def __init__(self, cluster: Cluster, partitions: int) -> None:
        self.cluster = cluster
        self.partitions = partitions
        self._write = cluster.script(SCRIPTS / "write_profile.lua")
        self._get = cluster.script(SCRIPTS / "get_profile.lua")
        self._delete = cluster.script(SCRIPTS / "delete_profile.lua")

    def _keys(self, user: str) -> list[str]:
        return script_keys(user, self.partitions, self.cluster.generation)

    async def create(self, user: str, fields: dict[str, str]) -> None:
        check_user(user)
        fields = check_fields(fields)
        if not await self.cluster.run(
            self._write, self._keys(user), [user, "create", *_flatten(fields)], Confirm.WRITE
        ):
            raise AlreadyExists("Profile exists")

    async def get(self, user: str) -> dict[str, str]:
        check_user(user)
        # A read's only write is its statistics event: the caller's data does not wait on replication.
        flat = await self.cluster.run(self._get, self._keys(user), [user], Confirm.READ)
        result = _profile_or_error(user, flat)
        if isinstance(result, Exception):
            raise result
        return result

    async def get_many(self, users: Sequence[str], retry_budget_s: float) -> list[dict[str, str] | Exception]:
        """Each user's profile or the error a get of it alone would raise, in order; one read counted per user."""
        if not users:
            raise InvalidArgument("users must not be empty: give at least one user", field="users")
        if len(users) > MAX_BATCH:
            raise InvalidArgument(f"too many users: {len(users)}, at most {MAX_BATCH}", field="users")
        for index, user in enumerate(users):
            check_user(user, field=f"users[{index}]")
        replies = await self.cluster.run_many(self._get, [(self._keys(user), [user]) for user in users], retry_budget_s)
        return [_profile_or_error(user, reply) for user, reply in zip(users, replies, strict=True)]

    async def update(self, user: str, fields: dict[str, str]) -> None:
        check_user(user)
        fields = check_fields(fields)
        if not await self.cluster.run(
            self._write, self._keys(user), [user, "update", *_flatten(fields)], Confirm.WRITE
        ):
            raise NotFound(f"Profile not found for {user}")

    async def delete(self, user: str) -> None:
        check_user(user)
        if not await self.cluster.run(self._delete, self._keys(user), [user], Confirm.WRITE):
            raise NotFound(f"Profile not found for {user}")
