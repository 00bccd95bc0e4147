"""The cluster's ACL users: one per component, each allowed only what its code runs.

The one place the rules live. Key patterns come from common/storage/keys.py's prefixes; localdev writes them
into the local cluster's ACL file, and the README's MemoryDB access strings are the same strings.
Functions run with their caller's permissions, so each user is also allowed the commands and keys
its functions touch. The gateway has no user: it never talks to the cluster.
"""

from __future__ import annotations

import hashlib

from common.storage import keys

USERS = {
    "profile_svc": "profilemesh-profile",
    "aggregator_svc": "profilemesh-aggregator",
    "reporting_svc": "profilemesh-reporting",
}
# For people and test helpers that inspect the cluster (the `profilemesh` command), never for services.
ADMIN_USER = "profilemesh-admin"
# What a replica uses to sync from its primary (masteruser).
REPLICATION_USER = "profilemesh-replication"

# What any cluster client needs: learn and follow the topology, the command table, health pings.
_CLIENT = "+ping +cluster|slots +cluster|shards +cluster|nodes +cluster|info +command +asking +readonly"
# Running the functions an admin step loaded (common/storage/functions.py), never code of their own: no EVAL,
# EVALSHA or SCRIPT, and no FUNCTION (the admin, or MIGRATION below, loads them). Reporting's run with FCALL_RO.
_SCRIPTS = "+fcall"
# The partition count: profile_svc records it on first start, the others only read it.
_PARTITIONS_READ = f"%R~{keys.PARTITIONS_KEY} +get"

_ROLES = {
    "profile_svc": (
        f"~{keys.PROFILE_PREFIX}* ~{keys.EVENTS_PREFIX}* ~{keys.PARTITIONS_KEY} ~{keys.DEPLOYMENT_KEY} +get +set "
        f"{_CLIENT} {_SCRIPTS} +info +wait +waitaof "
        # create/get/update/delete_profile.lua and events_after.lua; the change feed's tail readers.
        "+exists +hset +hgetall +hmget +unlink +xadd +time +xinfo|stream +xrange +xread"
    ),
    "aggregator_svc": (
        f"~{keys.EVENTS_PREFIX}* ~{keys.STATS_PREFIX}* {_PARTITIONS_READ} {_CLIENT} {_SCRIPTS} "
        "+xgroup|create +xgroup|delconsumer +xreadgroup +xread +xautoclaim +xack +xpending +xinfo|groups "
        "+xinfo|consumers +xinfo|stream +xlen +xrange +xtrim +exists +time "
        # apply_events.lua, recount_step.lua and trim_acknowledged.lua write the statistics.
        "+hget +hmget +hset +hdel +hincrby +zincrby +zadd +zrem +zrangebyscore"
    ),
    # Read-only by its commands: none of them writes, and FCALL_RO runs only no-writes functions. (FCALL_RO
    # declares its keys read-only, so %R~ on stats:* would be accepted too, by Redis 7.0 and Valkey alike.)
    "reporting_svc": (
        f"~{keys.STATS_PREFIX}* {_PARTITIONS_READ} {_CLIENT} +fcall_ro +zscore +hgetall +zrevrange +zrangebyscore"
    ),
}
_ADMIN = "~* &* +@all"
_REPLICATION = "+psync +replconf +ping"


def rules(component: str, waitaof: bool = True) -> str:
    """The ACL rules of a component's user (a MemoryDB access string); `waitaof` False for servers before 7.2."""
    role = _ROLES[component]
    return role if waitaof else role.replace(" +waitaof", "")


# `profilemesh cluster migrate` (profilemesh_cli/migrate.py) where it has a user of its own (the MemoryDB users of
# deploy/aws, the Kubernetes Job): follow the topology and load, list and delete function libraries; no key, no
# FCALL. Locally the admin runs it.
MIGRATION_USER = "profilemesh-migrate"
MIGRATION = f"{_CLIENT} +function|load +function|list +function|delete"


def password_hash(password: str) -> str:
    return hashlib.sha256(password.encode()).hexdigest()


def acl_file(passwords: dict[str, str], waitaof: bool = True) -> str:
    """An ACL file (aclfile) with every user and its password's hash, and the default user off.

    `passwords` maps user name to password for every component's user, the admin and replication.
    """
    # `off` is what refuses every connection that does not log in as one of the users below. The default
    # user keeps its permissions: the server replays MULTI/EXEC blocks from the append-only file as the
    # default user and re-checks them, so without them a restart silently drops every script's writes.
    lines = ["user default off nopass ~* &* +@all"]
    for component, user in USERS.items():
        lines.append(f"user {user} on #{password_hash(passwords[user])} resetchannels {rules(component, waitaof)}")
    lines.append(f"user {ADMIN_USER} on #{password_hash(passwords[ADMIN_USER])} {_ADMIN}")
    lines.append(f"user {REPLICATION_USER} on #{password_hash(passwords[REPLICATION_USER])} {_REPLICATION}")
    return "\n".join(lines) + "\n"


def all_users() -> list[str]:
    return [*USERS.values(), ADMIN_USER, REPLICATION_USER]


if __name__ == "__main__":  # `python -m common.storage.acl`: the MemoryDB access strings, as the README gives them
    for component_name, user_name in USERS.items():
        print(f"{user_name}: on {rules(component_name)}")
