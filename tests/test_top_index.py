"""The top list's index on a running system (docs/architecture.md, "The top list's index"): what the aggregator
does beyond copying each count's note, which tests/aggregation_model.py checks script by script.

- Reads counted before the index existed (a partition never indexed: the first start of this version, or a
  resize's new keyspace) are in the top list once the partition's next take has noted them.
- A bucket that lost copies (its slot failed over after they were made) gets them back from the periodic
  reindex of the partitions.
- A bucket that holds a user its partition does not (the partition failed over, losing the user's reads, after
  the copy) loses it at the periodic sweep.
- The index's scripts refuse bad arguments, saying what was wrong, before they write anything (on the suite's
  standalone node).

The first on a system of the module's own with the default settings (no periodic reindex for ten minutes, so
only the first take's can put the reads in the top list); the repairs on another, reindexing every REINDEX_S, with
reporting_svc's cache off, so that each top list is read afresh.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import redis
from redis.cluster import RedisCluster

from aggregator_svc.aggregator import INDEX_TOP_SCRIPT, NOTE_USERS_SCRIPT, OUTBOX_NOTES_SCRIPT, REINDEX_SCRIPT
from common.storage import keys
from localdev.system import System
from profilemesh.profile.v1 import profile_pb2, profile_pb2_grpc
from profilemesh.reporting.v1 import reporting_pb2, reporting_pb2_grpc
from tests.conftest import PARTITIONS, TEST_SETTINGS, running_system
from tests.helpers import FunctionCall, aggregator_settled, load_functions, wait_until

REINDEX_S = 2


@pytest.fixture(scope="module")
def indexed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    settings = {
        **TEST_SETTINGS,
        "PROFILEMESH_AGGREGATOR_REINDEX_S": str(REINDEX_S),
        "PROFILEMESH_REPORTING_CACHE_MS": "0",
    }
    with running_system(tmp_path_factory.mktemp("top-index"), settings) as running:
        yield running


@pytest.fixture
def admin(indexed: System) -> Iterator[RedisCluster]:
    client = indexed.cluster.client(decode_responses=True)
    yield client
    client.close()


def top(system: System, limit: int = 100) -> dict[str, int]:
    with grpc.insecure_channel(f"127.0.0.1:{system.reporting_port}") as channel:
        reply = reporting_pb2_grpc.ReportingServiceStub(channel).GetTopProfiles(
            reporting_pb2.GetTopProfilesRequest(limit=limit), timeout=10
        )
    return {row.user: row.score for row in reply.results}


def user_in(partition: int, prefix: str) -> str:
    return next(
        name for name in (f"{prefix}{n}" for n in range(100_000)) if keys.partition_of(name, PARTITIONS) == partition
    )


def touch(system: System, user: str) -> None:
    """An event in the user's partition (a create and a read of the user): its next take, and it has recent events,
    so it is looked after every maintenance interval."""
    with grpc.insecure_channel(f"127.0.0.1:{system.profile_port}") as channel:
        stub = profile_pb2_grpc.ProfileServiceStub(channel)
        stub.CreateProfile(
            profile_pb2.CreateProfileRequest(user=user, fields={"email": f"{user}@example.com"}), timeout=10
        )
        stub.GetProfile(profile_pb2.GetProfileRequest(user=user), timeout=10)


def test_reads_counted_before_the_partition_was_indexed_are_in_the_top_list(
    fresh_system: System, fresh_client: RedisCluster
) -> None:
    partition = 5
    wait_until(lambda: aggregator_settled(fresh_client, PARTITIONS), 30, what="the aggregator to settle")
    # What a version before the index counted, and a partition whose outbox never was.
    early = user_in(partition, "early")
    fresh_client.zadd(keys.reads_key(partition), {early: 500})
    fresh_client.delete(keys.top_outbox_key(partition))
    assert early not in top(fresh_system)
    touch(fresh_system, user_in(partition, "toucher"))
    wait_until(
        lambda: top(fresh_system).get(early) == 500, 30, what="the reads counted before the index in the top list"
    )
    assert fresh_client.hget(keys.top_outbox_key(partition), "#indexed") == "1"


def test_a_bucket_that_lost_copies_gets_them_back(indexed: System, admin: RedisCluster) -> None:
    partition = 6
    user = user_in(partition, "lost")
    touch(indexed, user)
    wait_until(lambda: top(indexed).get(user) == 1, 30, what="the read in the top list")
    # The bucket's slot fails over and the new primary lacks the copy: the user is gone from the bucket alone.
    bucket = keys.top_bucket_of(partition, PARTITIONS)
    admin.zrem(keys.top_key(bucket), user)
    admin.hdel(keys.top_versions_key(bucket), user)
    assert user not in top(indexed)
    wait_until(lambda: top(indexed).get(user) == 1, 10 * REINDEX_S + 20, what="the reindex to bring the copy back")


def test_a_user_the_partition_lost_leaves_the_bucket_at_the_sweep(indexed: System, admin: RedisCluster) -> None:
    partition = 7
    bucket = keys.top_bucket_of(partition, PARTITIONS)
    touch(indexed, user_in(bucket, "sweeper"))  # the bucket's sweep runs with its first partition's look-after
    # The partition failed over after the copy and lost the user's reads: the bucket alone still holds them.
    ghost = user_in(partition, "ghost")
    admin.zadd(keys.top_key(bucket), {ghost: 900})
    assert top(indexed).get(ghost) == 900
    wait_until(lambda: ghost not in top(indexed), 10 * REINDEX_S + 20, what="the sweep to remove the user")


SCRIPT_ARGUMENTS = [
    (INDEX_TOP_SCRIPT, ["ann"], "user and note pairs"),
    (INDEX_TOP_SCRIPT, ["ann", "12 3", "bob", "3"], "not a note: 3"),
    (INDEX_TOP_SCRIPT, ["ann", "12 many"], "not a note: 12 many"),
    (OUTBOX_NOTES_SCRIPT, ["0", "0"], "a page reads from 1 to 1000"),
    (OUTBOX_NOTES_SCRIPT, ["0", "1.5"], "a page reads from 1 to 1000"),
    (REINDEX_SCRIPT, ["0", "1001"], "a step notes users from 1 to 1000"),
    (NOTE_USERS_SCRIPT, [f"u{n}" for n in range(1001)], "at most 1000 users"),
]


@pytest.fixture(scope="module")
def functions_node(node: redis.Redis) -> redis.Redis:
    load_functions(node)
    return node


@pytest.mark.parametrize(("script", "args", "message"), SCRIPT_ARGUMENTS)
def test_the_index_scripts_refuse_bad_arguments_and_write_nothing(
    functions_node: redis.Redis, script: Path, args: list[str], message: str
) -> None:
    """Each refusal names the script and what was wrong, and comes before any write."""
    names = ["stats:reads:{args}", "stats:top-outbox:{args}"]
    if script == INDEX_TOP_SCRIPT:
        names = ["stats:top:{args}", "stats:top-versions:{args}"]
    elif script == OUTBOX_NOTES_SCRIPT:
        names = names[1:]
    functions_node.delete(*names)
    with pytest.raises(redis.ResponseError, match=f"{script.stem}: {message}"):
        FunctionCall(script, functions_node)(keys=names, args=args)
    assert functions_node.exists(*names) == 0
