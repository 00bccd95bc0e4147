"""The cluster's ACL users: one per component, each allowed only what its code runs, and only where.

The one place the rules live: `ROLES` says, per component and per key family (common/storage/keys.py),
which commands it may run there, and whether the family is read-only to it. Every rule string (localdev's
ACL file, the MemoryDB access strings of deploy/aws and the README, `python -m common.storage.acl`) is
generated from it, and tests/test_acl_matrix.py generates its cases from it too.

Each family becomes an ACL selector (Redis 7 / Valkey): `(~pattern +command ...)`. The server allows a
command when the root permissions or any one selector allow it whole, every key included, so a command
granted on one family can't reach another (UNLINK on profiles is not UNLINK on the event streams).
Scripts run with their caller's rights: the commands a role's Lua runs on a family are in that family's
entry, and the entry that runs code is one selector over every family the role's scripts touch (FCALL
declares its keys, read-write). The gateway has no user: it never talks to the cluster.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

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


def _every_partition(key: str) -> str:
    """The pattern of `key` (one of partition 0) in every partition."""
    return key.replace(keys.tag(0), "{p*}")


# A user name can't hold `*`, `:`, `{`, `}` or `#` (common/rpc/validation.py), so no key the services make
# matches two of these patterns.
_ANY_PROFILE = keys.profile_key("*", 1)  # one partition: the user's is partition 0
FAMILIES: dict[str, str] = {
    "profiles": _every_partition(_ANY_PROFILE),
    "fences": _every_partition(keys.fence_key(_ANY_PROFILE)),
    "event streams": _every_partition(keys.events_key(0)),
    "trimmed markers": _every_partition(keys.trimmed_key(0)),
    "reads": _every_partition(keys.reads_key(0)),
    "totals": _every_partition(keys.totals_key(0)),
    "tombstones": _every_partition(keys.deleted_key(0)),
    "tombstones by time": _every_partition(keys.deleted_at_key(0)),
    "recounts": _every_partition(keys.recount_key(0)),
    "wake flags": _every_partition(keys.wake_key(0)),  # keys, and sharded channels of the same names
    "top outboxes": _every_partition(keys.top_outbox_key(0)),
    "top index": keys.top_key(0).replace(keys.top_tag(0), "{t*}"),
    "top index versions": keys.top_versions_key(0).replace(keys.top_tag(0), "{t*}"),
    "feed checkpoints": keys.checkpoint_key("*", 0).replace(":0", ":*"),
    "partition count": keys.PARTITIONS_KEY,
    "deployment key": keys.DEPLOYMENT_KEY,
    "aggregator replicas": keys.AGGREGATORS_KEY,
}


@dataclass(frozen=True)
class Rights:
    """What a role may run on one key family."""

    commands: str
    # The family's keys are read-only to the role (`%R~`): the server refuses any command that writes them,
    # even one listed here by mistake.
    read_only: bool = False
    # The role's scripts run commands on the family, so its code entry must cover it.
    scripts: bool = False
    # The family's names are also pub/sub channels the role may use (`&`): the wake flags.
    channels: bool = False


@dataclass(frozen=True)
class Role:
    keyless: str  # root permissions: commands that name no key
    code: str  # running the role's scripts: one selector over every family with scripts=True
    families: dict[str, Rights]


# What any cluster client needs: learn and follow the topology, the command table, health pings.
_CLIENT = "+ping +cluster|slots +cluster|shards +cluster|nodes +cluster|info +command +asking +readonly"
# Running the functions an admin step loaded (common/storage/functions.py), never code of their own: no EVAL,
# EVALSHA or SCRIPT, and no FUNCTION (the admin, or MIGRATION below, loads them). Reporting's are no-writes,
# run with FCALL_RO only.
_RUN_SCRIPTS = "+fcall"
_RUN_READ_ONLY_SCRIPTS = "+fcall_ro"

ROLES: dict[str, Role] = {
    "profile_svc": Role(
        # INFO: whether a primary has a replica in sync; WAIT/WAITAOF: durability; TIME: the events' time (Lua).
        keyless=f"{_CLIENT} +info +wait +waitaof +time",
        code=_RUN_SCRIPTS,
        families={
            # write_profile.lua, get_profile.lua, delete_profile.lua.
            "profiles": Rights("+exists +hset +hgetall +unlink", scripts=True),
            # The read check sets it right before WAIT (common/storage/durable.py).
            "fences": Rights("+set"),
            # Every script appends its event (helpers.lua); events_after.lua reads.
            "event streams": Rights("+xadd +exists +xrange +xinfo|stream", scripts=True),
            "trimmed markers": Rights("+hmget", read_only=True, scripts=True),  # events_after.lua
            # Every script's event wakes whoever waits for the partition (helpers.lua): the aggregator, and the
            # change feed, whose tail reads arm the flag (events_after.lua) and whose wakes come by subscription.
            "wake flags": Rights("+get +set +spublish +ssubscribe", scripts=True, channels=True),
            # Where the change feed's tail readers have stood, which resume tokens name: record_checkpoint.lua
            # writes a block, a resume reads one; both renew its expiry.
            "feed checkpoints": Rights("+lindex +rpush +pexpire +lrange", scripts=True),
            # Written once, on first start: SETNX, not SET, so no one holding the password can change them.
            "partition count": Rights("+get +setnx"),
            "deployment key": Rights("+get +setnx"),  # the change feed's token secret
        },
    ),
    "aggregator_svc": Role(
        keyless=f"{_CLIENT} +time",  # TIME: trim_acknowledged.lua
        code=_RUN_SCRIPTS,
        families={
            # Its consumer group (aggregator.py, lag.py) and apply_events, recount_step, trim_acknowledged.lua.
            "event streams": Rights(
                "+xgroup|create +xgroup|delconsumer +xreadgroup +xread +xautoclaim +xack +xpending +xinfo|groups "
                "+xinfo|consumers +xinfo|stream +xlen +xrange +xtrim +exists",
                scripts=True,
            ),
            "trimmed markers": Rights("+hset", scripts=True),  # trim_acknowledged.lua records the last one trimmed
            # ZSCORE, ZSCAN: the top list's notes of a partition's scores (helpers.lua, reindex_partition.lua).
            "reads": Rights("+zincrby +zadd +zrem +zscore +zscan", scripts=True),
            "totals": Rights("+hincrby", scripts=True),
            "tombstones": Rights("+hmget +hset +hdel", scripts=True),
            "tombstones by time": Rights("+zadd +zrem +zrangebyscore", scripts=True),
            "recounts": Rights("+exists +hget +hset +hdel", scripts=True),
            # A take that finds nothing sets the partition's (apply_events.lua); the wakes come by subscription.
            "wake flags": Rights("+set +ssubscribe", scripts=True, channels=True),
            # The top list's index: the scripts that count note scores in the outbox (helpers.lua), the copy reads
            # it (outbox_notes.lua) into the buckets (index_top.lua) and clears it (clear_outbox.lua); the sweep
            # reads the buckets (ZSCAN).
            "top outboxes": Rights("+hmget +hset +hlen +hdel +hscan", scripts=True),
            "top index": Rights("+zadd +zrem +zscan", scripts=True),
            "top index versions": Rights("+hmget +hset", scripts=True),
            # heartbeat.lua: each replica's word that it is live, and the others' (the partitions' shares).
            "aggregator replicas": Rights("+zadd +zremrangebyscore +zrange", scripts=True),
            "partition count": Rights("+get", read_only=True),
        },
    ),
    "reporting_svc": Role(
        keyless=_CLIENT,
        code=_RUN_READ_ONLY_SCRIPTS,
        families={
            # GetProfileStats (ZSCORE); ZREVRANGE and ZRANGEBYSCORE for the processes of the version before the top
            # list's index, which read the partitions' (top_readers.lua), during a rolling upgrade.
            "reads": Rights("+zscore +zrevrange +zrangebyscore", read_only=True, scripts=True),
            "top index": Rights("+zrevrange +zrangebyscore", read_only=True, scripts=True),  # top_readers.lua
            "totals": Rights("+hgetall", read_only=True, scripts=True),  # partition_totals.lua
            "partition count": Rights("+get", read_only=True),
        },
    ),
}
_ADMIN = "~* &* +@all"
_REPLICATION = "+psync +replconf +ping"


def _selector(families: list[str], commands: str, read_only: bool, channels: bool = False) -> str:
    patterns = " ".join(f"{'%R~' if read_only else '~'}{FAMILIES[family]}" for family in families)
    if channels:
        patterns += "".join(f" &{FAMILIES[family]}" for family in families)
    return f"({patterns} {commands})"


def script_families(component: str) -> list[str]:
    """The families the component's scripts touch: its code entry's keys."""
    return [family for family, rights in ROLES[component].families.items() if rights.scripts]


def rules(component: str, waitaof: bool = True) -> str:
    """The ACL rules of a component's user (a MemoryDB access string); `waitaof` False for servers before 7.2."""
    role = ROLES[component]
    keyless = role.keyless if waitaof else role.keyless.replace(" +waitaof", "")
    # FCALL declares its keys read-write (Redis 7.0 refuses it on a %R~ pattern), FCALL_RO read-only: the code
    # entry's patterns follow; what a function may do on each family is still only what that family's entry allows.
    selectors = [_selector(script_families(component), role.code, read_only=role.code == _RUN_READ_ONLY_SCRIPTS)]
    for family, rights in role.families.items():
        selectors.append(_selector([family], rights.commands, rights.read_only, rights.channels))
    return " ".join([keyless, *selectors])


# `profilemesh cluster migrate` (common/storage/migration.py) where it has a user of its own (the MemoryDB users of
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
