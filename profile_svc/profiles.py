"""The profile domain: validated operations, each one script on the user's partition slot."""

from __future__ import annotations

from pathlib import Path

from common import keys
from common.cluster import Cluster
from common.errors import AlreadyExists, NotFound
from common.validation import check_fields, check_user
from profile_svc.durable import DurableScripts

SCRIPTS = Path(__file__).parent / "scripts"


def _flatten(fields: dict[str, str]) -> list[str]:
    return [item for pair in fields.items() for item in pair]


class Profiles:
    def __init__(self, cluster: Cluster) -> None:
        self.scripts = DurableScripts(cluster)
        self.partitions = cluster.settings.partitions
        self._write = cluster.script(SCRIPTS / "write_profile.lua")
        self._get = cluster.script(SCRIPTS / "get_profile.lua")
        self._delete = cluster.script(SCRIPTS / "delete_profile.lua")

    def _keys(self, user: str) -> tuple[str, str]:
        partition = keys.partition_of(user, self.partitions)
        return keys.profile_key(user, self.partitions), keys.events_key(partition)

    async def create(self, user: str, fields: dict[str, str]) -> None:
        check_user(user)
        fields = check_fields(fields)
        if not await self.scripts.run(self._write, self._keys(user), [user, "create", *_flatten(fields)]):
            raise AlreadyExists("Profile exists")

    async def get(self, user: str) -> dict[str, str]:
        check_user(user)
        # A read's only write is its statistics event: the caller's data does not wait on replication.
        flat = await self.scripts.run(self._get, self._keys(user), [user], durable=False)
        if flat is None:
            raise NotFound(f"Profile not found for {user}")
        return {flat[i].decode(): flat[i + 1].decode() for i in range(0, len(flat), 2)}

    async def update(self, user: str, fields: dict[str, str]) -> None:
        check_user(user)
        fields = check_fields(fields)
        if not await self.scripts.run(self._write, self._keys(user), [user, "update", *_flatten(fields)]):
            raise NotFound(f"Profile not found for {user}")

    async def delete(self, user: str) -> None:
        check_user(user)
        if not await self.scripts.run(self._delete, self._keys(user), [user]):
            raise NotFound(f"Profile not found for {user}")
