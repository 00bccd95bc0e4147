"""The ACL matrix, generated from common/storage/acl.py's table, on the real cluster with TLS on (Redis 7.0).

For every component's user: every command it holds, and the writes an attacker with its credentials tries
first (DEL, UNLINK, SET, HSET, XADD, XTRIM), on a key of every key family and one outside the layout:
allowed exactly where the table grants it, refused (NOPERM) everywhere else. ACL DRYRUN asks the server for
each case; one real command per (user, family) shows DRYRUN tells the truth; and the services' own flows
through the real services, with the read check and the change feed on, leave no refusal in the ACL log.
The same matrix runs on the session's Valkey cluster, WAITAOF included, in tests/test_acl.py.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from redis.cluster import RedisCluster
from redis.exceptions import NoPermissionError, ResponseError

from aggregator_svc.aggregator import apply_keys, outbox_keys, recount_keys, take_keys, trim_keys
from common.storage import acl, keys
from localdev.system import System
from profile_svc.profiles import script_keys
from profilemesh.profile.v1 import profile_pb2, profile_pb2_grpc
from profilemesh.reporting.v1 import reporting_pb2, reporting_pb2_grpc
from tests.conftest import PARTITIONS, TEST_SETTINGS, running_system
from tests.helpers import http_call, wait_until
from tests.test_seed_walkthrough import walk_through

# The samples live in a partition beyond the system's count: no service reads or writes them.
SAMPLE_PARTITION = PARTITIONS + 83
OUTSIDE = "outside the layout"
K = "<key>"  # where a command's key goes
SHA = "0" * 40
# Every command that takes a key, as ACL DRYRUN and the real command are given it.
WITH_KEY: dict[str, list[str]] = {
    "get": ["GET", K],
    "set": ["SET", K, "matrix"],
    "setnx": ["SETNX", K, "matrix"],
    "del": ["DEL", K],
    "unlink": ["UNLINK", K],
    "exists": ["EXISTS", K],
    "hset": ["HSET", K, "matrix", "1"],
    "hget": ["HGET", K, "matrix"],
    "hmget": ["HMGET", K, "matrix"],
    "hgetall": ["HGETALL", K],
    "hdel": ["HDEL", K, "matrix"],
    "hincrby": ["HINCRBY", K, "matrix", "1"],
    "zadd": ["ZADD", K, "1", "matrix"],
    "zincrby": ["ZINCRBY", K, "1", "matrix"],
    "zrem": ["ZREM", K, "matrix"],
    "zscore": ["ZSCORE", K, "matrix"],
    "zscan": ["ZSCAN", K, "0"],
    "hscan": ["HSCAN", K, "0"],
    "hlen": ["HLEN", K],
    "zrevrange": ["ZREVRANGE", K, "0", "1"],
    "zrangebyscore": ["ZRANGEBYSCORE", K, "-inf", "+inf"],
    "zremrangebyscore": ["ZREMRANGEBYSCORE", K, "-inf", "0"],
    "zrange": ["ZRANGE", K, "0", "-1"],
    "rpush": ["RPUSH", K, "matrix"],
    "lindex": ["LINDEX", K, "-1"],
    "lrange": ["LRANGE", K, "0", "-1"],
    "pexpire": ["PEXPIRE", K, "600000"],
    "xadd": ["XADD", K, "*", "user", "matrix"],
    "xrange": ["XRANGE", K, "-", "+", "COUNT", "1"],
    "xread": ["XREAD", "COUNT", "1", "STREAMS", K, "0"],
    "xreadgroup": ["XREADGROUP", "GROUP", "matrix", "matrix", "COUNT", "1", "STREAMS", K, ">"],
    "xautoclaim": ["XAUTOCLAIM", K, "matrix", "matrix", "0", "0"],
    "xack": ["XACK", K, "matrix", "0-1"],
    "xpending": ["XPENDING", K, "matrix"],
    "xinfo|groups": ["XINFO", "GROUPS", K],
    "xinfo|consumers": ["XINFO", "CONSUMERS", K, "matrix"],
    "xinfo|stream": ["XINFO", "STREAM", K],
    "xlen": ["XLEN", K],
    "xtrim": ["XTRIM", K, "MAXLEN", "1000"],
    "xgroup|create": ["XGROUP", "CREATE", K, "matrix", "$", "MKSTREAM"],
    "xgroup|delconsumer": ["XGROUP", "DELCONSUMER", K, "matrix", "matrix"],
    "evalsha": ["EVALSHA", SHA, "1", K],
    "eval": ["EVAL", "return 1", "1", K],
    "fcall": ["FCALL", "matrix_function", "1", K],
    "fcall_ro": ["FCALL_RO", "matrix_function", "1", K],
    # Sharded pub/sub names a channel where the others name a key: the wake flags are both (keys.wake_key).
    "spublish": ["SPUBLISH", K, "1"],
    "ssubscribe": ["SSUBSCRIBE", K],
}
KEYLESS: dict[str, list[str]] = {
    "ping": ["PING"],
    "cluster|slots": ["CLUSTER", "SLOTS"],
    "cluster|shards": ["CLUSTER", "SHARDS"],
    "cluster|nodes": ["CLUSTER", "NODES"],
    "cluster|info": ["CLUSTER", "INFO"],
    "command": ["COMMAND", "COUNT"],
    "asking": ["ASKING"],
    "readonly": ["READONLY"],
    "info": ["INFO", "replication"],
    "wait": ["WAIT", "1", "0"],
    "waitaof": ["WAITAOF", "1", "0", "0"],
    "time": ["TIME"],
    "script|load": ["SCRIPT", "LOAD", "return 1"],
    "script|exists": ["SCRIPT", "EXISTS", SHA],
}
# What an attacker holding a component's credentials tries first, whether or not the user holds it.
PROBES = ("del", "unlink", "set", "hset", "xadd", "xtrim")
# The command run for real on a family the user may touch: a read where it has one.
READS = (
    "get",
    "hgetall",
    "hmget",
    "hget",
    "exists",
    "xrange",
    "xlen",
    "zscore",
    "zrevrange",
    "zrangebyscore",
    "zrange",
    "lrange",
    "hscan",
    "zscan",
)


def _commands(rules: str) -> list[str]:
    return [word.removeprefix("+") for word in rules.split()]


def sample(family: str) -> str:
    """A key of the family in the sample partition (the family's key itself for the singletons)."""
    if family == OUTSIDE:
        return "profilemesh-matrix:elsewhere"
    return acl.FAMILIES[family].replace("{p*}", keys.tag(SAMPLE_PARTITION)).replace("*", "matrix")


def granted(component: str, command: str, family: str) -> bool:
    """What the table says: the family's entry lists the command, or the command runs code and the role's
    scripts touch the family."""
    role = acl.ROLES[component]
    if family == OUTSIDE:
        return False
    rights = role.families.get(family)
    on_family = rights is not None and command in _commands(rights.commands)
    return on_family or (command in _commands(role.code) and family in acl.script_families(component))


def held(component: str) -> list[str]:
    """Every command the component's user holds on some key."""
    role = acl.ROLES[component]
    found = [c for rights in role.families.values() for c in _commands(rights.commands)]
    found += [c for c in _commands(role.code) if c in WITH_KEY]
    return list(dict.fromkeys(found))


def cases(component: str) -> list[tuple[str, str, bool]]:
    """(command, family, allowed) for every command the user holds or is probed with, on every family."""
    commands = list(dict.fromkeys([*held(component), *PROBES]))
    families = [*acl.FAMILIES, OUTSIDE]
    return [(command, family, granted(component, command, family)) for command in commands for family in families]


def with_key(command: str, key: str) -> list[str]:
    return [key if word == K else word for word in WITH_KEY[command]]


def dry_run(node: redis.Redis, user: str, calls: list[list[str]]) -> list[str]:
    """ACL DRYRUN of each call as `user`: "OK" or the server's reason for refusing it."""
    pipe = node.pipeline(transaction=False)
    for call in calls:
        pipe.execute_command("ACL", "DRYRUN", user, *call)
    return [str(reply) for reply in pipe.execute(raise_on_error=True)]


def check_matrix(node: redis.Redis, waitaof: bool) -> dict[str, int]:
    """The whole matrix against the server of `node`; returns the count of cases per user. Fails listing every
    case where the server and the table disagree."""
    wrong: list[str] = []
    counted: dict[str, int] = {}
    for component, user in acl.USERS.items():
        table = cases(component)
        replies = dry_run(node, user, [with_key(command, sample(family)) for command, family, _ in table])
        for (command, family, allowed), reply in zip(table, replies, strict=True):
            if allowed and reply != "OK":
                wrong.append(f"{user} {command.upper()} on {family}: refused ({reply})")
            elif not allowed and "no permissions" not in reply:
                wrong.append(f"{user} {command.upper()} on {family}: {reply}, the table refuses it")
        keyless = [c for c in _commands(acl.ROLES[component].keyless) if waitaof or c != "waitaof"]
        keyless += [c for c in _commands(acl.ROLES[component].code) if c in KEYLESS]
        for command, reply in zip(keyless, dry_run(node, user, [KEYLESS[c] for c in keyless]), strict=True):
            if reply != "OK":
                wrong.append(f"{user} {command.upper()}: refused ({reply})")
        counted[user] = len(table) + len(keyless)
    assert not wrong, "\n".join(wrong)
    return counted


def test_the_table_names_only_commands_the_matrix_can_run() -> None:
    """Every command in the table has its arguments here, so no case is left out of the matrix."""
    for component, role in acl.ROLES.items():
        for command in _commands(role.keyless) + _commands(role.code):
            assert command in WITH_KEY or command in KEYLESS, (component, command)
        for family, rights in role.families.items():
            assert family in acl.FAMILIES
            for command in _commands(rights.commands):
                assert command in WITH_KEY, (component, family, command)


def test_no_key_the_services_make_is_in_two_families() -> None:
    """Selectors are per family: a key matching two patterns would get both families' rights."""
    made = {
        "profiles": keys.profile_key("a.b@c+d-e_f", PARTITIONS),
        "fences": keys.fence_key(keys.profile_key("a.b@c+d-e_f", PARTITIONS)),
        "event streams": keys.events_key(7),
        "trimmed markers": keys.trimmed_key(7),
        "reads": keys.reads_key(7),
        "totals": keys.totals_key(7),
        "tombstones": keys.deleted_key(7),
        "tombstones by time": keys.deleted_at_key(7),
        "recounts": keys.recount_key(7),
        "wake flags": keys.wake_key(7),
        "top outboxes": keys.top_outbox_key(7),
        "top index": keys.top_key(7),
        "top index versions": keys.top_versions_key(7),
        "feed checkpoints": keys.checkpoint_key("0123456789abcdef", 3),
        "partition count": keys.PARTITIONS_KEY,
        "deployment key": keys.DEPLOYMENT_KEY,
        "aggregator replicas": keys.AGGREGATORS_KEY,
    }
    assert set(made) == set(acl.FAMILIES)
    for family, key in made.items():
        matching = [name for name, pattern in acl.FAMILIES.items() if fnmatch.fnmatchcase(key, pattern)]
        assert matching == [family], (key, matching)


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    """TLS cluster (Redis 7.0) and mutual TLS, with the read check on, so profile_svc's fence and WAIT run too."""
    settings = {**TEST_SETTINGS, "PROFILEMESH_READ_CHECK": "replica"}
    with running_system(tmp_path_factory.mktemp("matrix"), settings, secure=True) as system:
        yield system


@pytest.fixture(scope="module")
def admin(secured: System) -> Iterator[RedisCluster]:
    client = secured.cluster.client(decode_responses=True)
    yield client
    client.close()


def _acl_log(system: System) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = []
    for index in range(len(system.cluster.ports)):
        entries += system.cluster.node(index).acl_log()
    return entries


def _refusals(system: System) -> list[dict[str, Any]]:
    """What the cluster refused the services' users (its ACL log), on every node."""
    return [entry for entry in _acl_log(system) if entry["username"] in acl.USERS.values()]


def _reset_acl_log(system: System) -> None:
    for index in range(len(system.cluster.ports)):
        system.cluster.node(index).acl_log_reset()


def test_every_operation_of_every_role_works_and_meets_no_refusal(secured: System, admin: RedisCluster) -> None:
    """First in the module, on an empty cluster: the services' own flows (create, read with the read check,
    update, batch read, delete, aggregate with trimming and recounts, every report, the change feed from
    a token, the leaderboard), then no ACL refusal anywhere, the background loops' included."""
    _reset_acl_log(secured)
    walk_through(secured.gateway_port)  # create, read, delete, aggregate, top profiles
    port = secured.gateway_port
    assert http_call(port, "PATCH", "/profile/ana", {"email": "ana@example.org"})[0] == 200
    with secured.grpc_channel(secured.profile_port) as channel:
        profiles = profile_pb2_grpc.ProfileServiceStub(channel)
        batch = profiles.BatchGetProfiles(profile_pb2.BatchGetProfilesRequest(users=["ana", "zach"]), timeout=10)
        assert len(batch.results) == 2  # ana's profile (her ninth read) and zach's NOT_FOUND
        # The change feed: its first message carries a token (the deployment's secret signs it); resuming from
        # it delivers what happened since (events_after.lua reads the stream and its trimmed marker).
        watching = profiles.WatchProfileEvents(profile_pb2.WatchProfileEventsRequest(), timeout=10)
        first = next(watching)
        watching.cancel()
        profiles.CreateProfile(profile_pb2.CreateProfileRequest(user="matrix-feed", fields={"a": "b"}), timeout=10)
        resumed = profiles.WatchProfileEvents(
            profile_pb2.WatchProfileEventsRequest(resume_token=first.resume_token, users=["matrix-feed"]), timeout=10
        )
        event = next(message for message in resumed if message.HasField("event"))
        assert (event.event.user, event.event.type) == ("matrix-feed", "create")
        resumed.cancel()
    with secured.grpc_channel(secured.reporting_port) as channel:
        reporting = reporting_pb2_grpc.ReportingServiceStub(channel)
        request = reporting_pb2.GetProfileStatsRequest(user="ana")
        wait_until(lambda: reporting.GetProfileStats(request, timeout=10).reads == 9, what="ana's ninth read")
        assert reporting.GetOperationTotals(reporting_pb2.GetOperationTotalsRequest(), timeout=10).create >= 4
        leaderboard = reporting.WatchTopProfiles(reporting_pb2.WatchTopProfilesRequest(limit=3), timeout=10)
        assert [row.user for row in next(leaderboard).results] == ["ana", "roberto", "akua"]
        leaderboard.cancel()
    # Maintenance trims what every group acknowledged (events retained 1 s): it records what it trimmed.
    marker = keys.trimmed_key(keys.partition_of("ana", PARTITIONS))
    wait_until(lambda: admin.exists(marker) or _refusals(secured), what="the aggregator to trim ana's partition")
    assert _refusals(secured) == []
    assert admin.exists(marker)


def test_the_matrix_on_the_tls_cluster(secured: System) -> None:
    counted = check_matrix(secured.cluster.node(0), waitaof=False)
    commands = {user: len(list(dict.fromkeys([*held(c), *PROBES]))) for c, user in acl.USERS.items()}
    print(f"ACL matrix (Redis 7.0, TLS): {commands} commands x {len(acl.FAMILIES) + 1} families; {counted} cases")
    assert sum(counted.values()) > 300


def test_the_real_commands_agree_with_dry_run(secured: System, admin: RedisCluster) -> None:
    """Per (user, family): a read it holds where it may touch the family, UNLINK where it may not; the real
    command's verdict is DRYRUN's, and nothing it was refused changed a key."""
    samples = {
        "profiles": lambda key: admin.hset(key, "email", "matrix@example.com"),
        "fences": lambda key: admin.set(key, "1"),
        "event streams": lambda key: admin.xadd(key, {"user": "matrix", "type": "read", "ts": "0"}),
        "trimmed markers": lambda key: admin.hset(key, "id", "0-1"),
        "reads": lambda key: admin.zadd(key, {"matrix": 1}),
        "totals": lambda key: admin.hset(key, "read", 1),
        "tombstones": lambda key: admin.hset(key, "matrix", "0-1"),
        "tombstones by time": lambda key: admin.zadd(key, {"matrix": 1}),
        "recounts": lambda key: admin.hset(key, "head", 0),
        "wake flags": lambda key: admin.set(key, "0"),
        "top outboxes": lambda key: admin.hset(key, "matrix", "1 1"),
        "top index": lambda key: admin.zadd(key, {"matrix": 1}),
        "top index versions": lambda key: admin.hset(key, "matrix", "1"),
        "feed checkpoints": lambda key: admin.rpush(key, "0 S 0-0.0.0"),
        OUTSIDE: lambda key: admin.set(key, "1"),
    }
    for family, make in samples.items():
        make(sample(family))
    node = secured.cluster.node(0)
    disagreements: list[str] = []
    runs = 0
    try:
        for component, user in acl.USERS.items():
            client = secured.cluster.client(user)
            try:
                for family in [*acl.FAMILIES, OUTSIDE]:
                    allowed = [c for c in held(component) if granted(component, c, family)]
                    command = next((c for c in READS if c in allowed), allowed[0]) if allowed else "unlink"
                    call = with_key(command, sample(family))
                    (verdict,) = dry_run(node, user, [call])
                    before = admin.dump(sample(family))
                    try:
                        client.execute_command(*call)
                        real = "OK"
                    except NoPermissionError as error:
                        real = f"NOPERM {error}"
                    except ResponseError as error:  # WRONGTYPE, NOGROUP...: the ACL let it through
                        real = "OK" if "NOPERM" not in str(error) else f"NOPERM {error}"
                    runs += 1
                    if (verdict == "OK") != (real == "OK") or (verdict == "OK") != bool(allowed):
                        disagreements.append(f"{user} {call[0]} on {family}: DRYRUN {verdict!r}, really {real!r}")
                    if real != "OK":
                        assert admin.dump(sample(family)) == before, f"{user}'s refused {call[0]} changed {family}"
            finally:
                client.close()
    finally:
        admin.delete(*(sample(family) for family in samples))
    assert not disagreements, "\n".join(disagreements)
    assert runs == len(acl.USERS) * (len(acl.FAMILIES) + 1)


def test_each_roles_scripts_may_name_all_their_keys_and_no_others(secured: System) -> None:
    """FCALL declares its keys: the code entry allows each function's real key list (a command is allowed only
    when one selector allows all its keys), and a script given any other family's key is refused."""
    partition = 3
    scripts = {
        "profile_svc": [script_keys("ana", PARTITIONS), [keys.events_key(partition), keys.trimmed_key(partition)]],
        "aggregator_svc": [
            take_keys(partition),
            apply_keys(partition),
            trim_keys(partition),
            recount_keys(partition),
            outbox_keys(partition),  # reindex_partition.lua, note_users.lua
            [keys.top_key(partition % keys.TOP_BUCKETS), keys.top_versions_key(partition % keys.TOP_BUCKETS)],
            [keys.top_outbox_key(partition)],  # clear_outbox.lua, outbox_notes.lua
        ],
        "reporting_svc": [[keys.reads_key(partition)], [keys.top_key(partition % keys.TOP_BUCKETS)]],
    }
    node = secured.cluster.node(0)
    for component, key_lists in scripts.items():
        user = acl.USERS[component]
        call = "FCALL_RO" if component == "reporting_svc" else "FCALL"  # the functions' call (functions.py)
        calls = [[call, "matrix_function", str(len(key_list)), *key_list] for key_list in key_lists]
        assert dry_run(node, user, calls) == ["OK"] * len(calls), component
        others = [f for f in acl.FAMILIES if f not in acl.script_families(component)]
        foreign = [[call, "matrix_function", "2", key_lists[0][0], sample(family)] for family in others]
        assert all("no permissions" in reply for reply in dry_run(node, user, foreign)), component


# Who may change each family at all (keys.py's layout): the promises the table must keep, whatever it says.
WRITERS = {
    "profiles": {"profile_svc"},
    "fences": {"profile_svc"},
    "event streams": {"profile_svc", "aggregator_svc"},  # profile_svc appends, the aggregator's group consumes
    "trimmed markers": {"aggregator_svc"},
    "reads": {"aggregator_svc"},
    "totals": {"aggregator_svc"},
    "tombstones": {"aggregator_svc"},
    "tombstones by time": {"aggregator_svc"},
    "recounts": {"aggregator_svc"},
    "wake flags": {"profile_svc", "aggregator_svc"},  # the aggregator arms it, the next event's script disarms it
    "partition count": {"profile_svc"},
    "deployment key": {"profile_svc"},
    "aggregator replicas": {"aggregator_svc"},
    "top outboxes": {"aggregator_svc"},  # the scripts that count note scores there, the copy clears them
    "top index": {"aggregator_svc"},
    "top index versions": {"aggregator_svc"},
    "feed checkpoints": {"profile_svc"},  # its change feed's tail states (profile_svc/feed_checkpoints.py)
}


def test_the_table_keeps_the_promises_of_least_privilege(secured: System) -> None:
    """The matrix checks the server against the table; this checks the table against the layout, with the
    server's own word (COMMAND INFO) on which commands write: a family changes only by its writers' hands,
    the deployment's secret is read by profile_svc alone, it and the partition count are written once and
    never overwritten, nothing is deleted but a profile, and profile_svc only appends to the streams."""
    node = secured.cluster.node(0)
    every = sorted({c for component in acl.ROLES for c in held(component)} | set(PROBES))
    writes = {
        name for name, info in node.execute_command("COMMAND", "INFO", *every).items() if "write" in info["flags"]
    }
    assert {"set", "hset", "unlink", "xadd", "xtrim", "zadd"} <= writes  # the server's word, not ours
    code = {"fcall", "fcall_ro"}  # what a function may do is each family's entry; checked there
    broken: list[str] = []
    for component in acl.ROLES:
        for family in acl.FAMILIES:
            allowed = {c for c in held(component) if granted(component, c, family)} - code
            if allowed & writes and component not in WRITERS[family]:
                broken.append(f"{component} may write {family}: {sorted(allowed & writes)}")
            if family == "deployment key" and allowed and component != "profile_svc":
                broken.append(f"{component} may read the deployment's secret: {sorted(allowed)}")
            deleting = allowed & {"del", "unlink"}
            if deleting and (component, family) != ("profile_svc", "profiles"):
                broken.append(f"{component} may delete {family}: {sorted(deleting)}")
            if family in ("partition count", "deployment key") and allowed & writes - {"setnx"}:
                broken.append(f"{component} may overwrite the {family}: {sorted(allowed & writes)}")
            if (component, family) == ("profile_svc", "event streams") and allowed & writes != {"xadd"}:
                broken.append(f"profile_svc may do more to the streams than append: {sorted(allowed & writes)}")
    assert not broken, "\n".join(broken)


def test_the_reporting_user_writes_nothing_even_through_a_script(secured: System) -> None:
    reporting = secured.cluster.client(acl.USERS["reporting_svc"])
    try:
        with pytest.raises(ResponseError, match="(?i)no permissions|ACL failure|can't run"):
            reporting.eval("return redis.call('ZADD', KEYS[1], 1, 'mallory')", 1, keys.reads_key(3))
    finally:
        reporting.close()
