"""Group commit (common/storage/group_commit.py): concurrent changes on one primary share one durability wait,
and each caller still gets its own answer. Against the running system: its profile_svc, replica durability.

The changes come as the members of one BatchWriteProfiles call, which profile_svc runs concurrently: so they
are concurrent on any machine, where separate calls are only as concurrent as the machine's load makes them
(200 separate creates took 6 to 14 WAITs on a loaded machine, 159 on a quiet one)."""

from __future__ import annotations

import itertools

from google.rpc import error_details_pb2

from common.storage import keys
from localdev.system import System
from profilemesh.profile.v1 import profile_pb2, profile_pb2_grpc
from tests.conftest import PARTITIONS
from tests.helpers import metric_sum, wait_until

CONCURRENT = 200


def _waits(system: System) -> int:
    """WAIT commands the cluster's nodes have run (INFO commandstats)."""
    return sum(
        int(system.cluster.node(index).info("commandstats").get("cmdstat_wait", {}).get("calls", 0))
        for index in range(len(system.cluster.ports))
    )


def _users_of_one_partition(prefix: str, count: int) -> list[str]:
    """`count` user names whose profiles all live in the same partition, hence on one primary."""
    users, candidate = [], 0
    while len(users) < count:
        user = f"{prefix}-{candidate}"
        if keys.partition_of(user, PARTITIONS) == 5:
            users.append(user)
        candidate += 1
    return users


def _users_of_distinct_partitions(prefix: str, count: int) -> list[str]:
    """`count` user names in as many distinct partitions as there can be: each in a partition of its own until
    every partition has one, then any."""
    users: list[str] = []
    seen: set[int] = set()
    for candidate in itertools.count():
        user = f"{prefix}-{candidate}"
        partition = keys.partition_of(user, PARTITIONS)
        if partition not in seen or len(seen) == PARTITIONS:
            seen.add(partition)
            users.append(user)
            if len(users) == count:
                break
    return users


def _create_in_one_batch(system: System, users: list[str]) -> list[str]:
    """Create `users` with one BatchWriteProfiles call, whose members run concurrently in profile_svc: each
    member's outcome, `created` or its error's reason."""
    stub = profile_pb2_grpc.ProfileServiceStub(system.grpc_channel(system.profile_port))
    requests = [
        profile_pb2.ProfileWriteRequest(
            create=profile_pb2.CreateProfileRequest(user=user, fields={"email": f"{user}@example.com"})
        )
        for user in users
    ]
    reply = stub.BatchWriteProfiles(profile_pb2.BatchWriteProfilesRequest(requests=requests), timeout=30)
    outcomes = []
    for result in reply.results:
        if result.WhichOneof("result") == "created":
            outcomes.append("created")
        else:
            info = error_details_pb2.ErrorInfo()
            assert result.error.details[0].Unpack(info)
            outcomes.append(info.reason)
    return outcomes


def test_concurrent_creates_on_one_primary_share_their_waits(system: System, unique: str) -> None:
    """200 creates at once on one partition (one call's members, so that they are at once on any machine):
    a handful of WAITs, not 200, and every create readable."""
    users = _users_of_one_partition(unique, CONCURRENT)
    before = _waits(system)
    outcomes = _create_in_one_batch(system, users)
    waits = _waits(system) - before
    assert outcomes == ["created"] * CONCURRENT
    print(f"{waits} WAITs for {CONCURRENT} creates")
    assert 1 <= waits <= 10, f"{waits} WAITs for {CONCURRENT} creates"
    stub = profile_pb2_grpc.ProfileServiceStub(system.grpc_channel(system.profile_port))
    for user in users:
        assert stub.GetProfile(profile_pb2.GetProfileRequest(user=user), timeout=10).fields == {
            "email": f"{user}@example.com"
        }


def test_each_change_in_a_group_gets_its_own_answer(system: System, unique: str) -> None:
    """Creates of profiles that exist go in the same groups as new ones: those alone answer ALREADY_EXISTS."""
    users = _users_of_one_partition(unique, CONCURRENT)
    existing = users[::5]
    assert _create_in_one_batch(system, existing) == ["created"] * len(existing)
    outcomes = _create_in_one_batch(system, users)
    assert outcomes == ["PROFILE_EXISTS" if user in existing else "created" for user in users]


def _shared_pipelines(system: System) -> tuple[float, float]:
    """The aggregator's shared pipelines so far, and those of them that carried more than two takes."""
    url = system.metrics_url("aggregator_svc")
    series = "profilemesh_cluster_shared_pipeline_size"
    pipelines = metric_sum(url, f"{series}_count")
    return pipelines, pipelines - metric_sum(url, f"{series}_bucket", 'le="2.0"')


def test_the_aggregators_takes_of_one_tick_share_a_pipeline_per_primary(system: System, unique: str) -> None:
    """An event in every partition at once (in 200 of them, one call's creates, when there are more): the
    partitions wake on the same tick and their takes go to the three primaries in one pipeline each (about five
    takes apiece at 16 partitions), not in a round trip each. An idle partition whose wait ran out takes alone,
    so pipelines of one or two are expected too."""
    users = _users_of_distinct_partitions(unique, CONCURRENT)
    assert len({keys.partition_of(user, PARTITIONS) for user in users}) == min(PARTITIONS, CONCURRENT)
    pipelines_before, shared_before = _shared_pipelines(system)
    assert _create_in_one_batch(system, users) == ["created"] * len(users)
    wait_until(
        lambda: _shared_pipelines(system)[1] - shared_before >= 3, timeout_s=15, what="three pipelines of 3+ takes"
    )
    pipelines, shared = (
        now - before for now, before in zip(_shared_pipelines(system), (pipelines_before, shared_before), strict=True)
    )
    print(f"{shared:.0f} of {pipelines:.0f} shared pipelines carried 3 or more takes")
