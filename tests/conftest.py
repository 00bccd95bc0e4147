"""The suite's real system: a local Valkey cluster and every service, on free ports."""

from __future__ import annotations

import contextlib
import itertools
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis
from redis.cluster import RedisCluster

from common.runtime import cancellation
from common.storage import keys
from localdev import image
from localdev.cluster import LocalNode
from localdev.system import System, on_free_ports
from profilemesh.profile.v1 import profile_pb2_grpc
from profilemesh.reporting.v1 import reporting_pb2_grpc
from tests.helpers import on_every_partition

# Tests run services' code in-process too (a change feed, a cluster client): under the runtime every service runs
# with, where a cancelled task stays cancelled (common/runtime/cancellation.py).
cancellation.install()

# The test system's partition count: 16 unless PROFILEMESH_TEST_PARTITIONS says otherwise (`make test-partitions`
# runs the suite at 4,096, the most a deployment may have). Tests meaning "the system's count" use this constant.
PARTITIONS = int(os.environ.get("PROFILEMESH_TEST_PARTITIONS", "16"))

# Short timeouts make failures and reclaims happen within a test's patience.
TEST_SETTINGS = {
    "PROFILEMESH_PARTITIONS": str(PARTITIONS),
    "PROFILEMESH_AGGREGATOR_CLAIM_IDLE_MS": "2000",
    "PROFILEMESH_AGGREGATOR_MAINTENANCE_S": "1",
    "PROFILEMESH_AGGREGATOR_QUIET_CHECK_S": "2",
    "PROFILEMESH_SHUTDOWN_GRACE_S": "5",
    "PROFILEMESH_DRAIN_MS": "300",
    "PROFILEMESH_LOG_LEVEL": "INFO",
    # Acknowledged events go within seconds, as tests of trimming expect; the change feed's tests that
    # resume from tokens run on a system with the default window (tests/test_watch_events.py).
    "PROFILEMESH_EVENTS_RETENTION_S": "1",
}


def make_system(directory: Path, settings: dict[str, str] | None = None, **options: Any) -> System:
    """`options`: on_free_ports's (replicas, secure, supervised, node_timeout_ms)."""
    return on_free_ports(directory, TEST_SETTINGS if settings is None else settings, **options)


@contextlib.contextmanager
def running_system(directory: Path, settings: dict[str, str] | None = None, **options: Any) -> Iterator[System]:
    """A whole system on free ports, with the suite's settings unless given others, stopped afterwards."""
    system = make_system(directory, settings, **options)
    try:
        system.start()
        yield system
    finally:
        system.stop()


@pytest.fixture(scope="session")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    with running_system(tmp_path_factory.mktemp("system")) as running:
        yield running


@pytest.fixture(scope="session")
def built_image() -> str:
    """The profilemesh image, built once for the image and compose tests (podman, no registry)."""
    seconds = image.build()
    print(f"image built in {seconds:.1f} s, {image.size_bytes() / 1e6:.0f} MB")
    return image.IMAGE


@pytest.fixture(scope="session")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[redis.Redis]:
    """A standalone node of the suite's own, for script tests that need no cluster (and may read SLOWLOG)."""
    local = LocalNode(tmp_path_factory.mktemp("node"))
    local.start()
    try:
        with redis.Redis.from_url(local.url, decode_responses=True) as client:
            yield client
    finally:
        local.stop()


@pytest.fixture(scope="module")
def fresh_system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    """A system of the module's own, for tests that need empty statistics or that stop the cluster."""
    with running_system(tmp_path_factory.mktemp("fresh")) as running:
        yield running


@pytest.fixture(scope="module")
def fresh_client(fresh_system: System) -> Iterator[RedisCluster]:
    """A client of the module's own cluster, to look at what the services wrote."""
    client = fresh_system.cluster.client(decode_responses=True)
    yield client
    client.close()


@pytest.fixture(scope="session")
def redis_client(system: System) -> Iterator[RedisCluster]:
    client = system.cluster.client(decode_responses=True)
    yield client
    client.close()


@pytest.fixture(scope="session")
def profile_stub(system: System) -> Iterator[profile_pb2_grpc.ProfileServiceStub]:
    with grpc.insecure_channel(f"127.0.0.1:{system.profile_port}") as channel:
        yield profile_pb2_grpc.ProfileServiceStub(channel)


@pytest.fixture(scope="session")
def reporting_stub(system: System) -> Iterator[reporting_pb2_grpc.ReportingServiceStub]:
    with grpc.insecure_channel(f"127.0.0.1:{system.reporting_port}") as channel:
        yield reporting_pb2_grpc.ReportingServiceStub(channel)


_counter = itertools.count()


@pytest.fixture
def unique() -> str:
    """A prefix for user names no other test uses, so tests share one cluster without interfering."""
    return f"t{next(_counter)}{uuid.uuid4().hex[:6]}"


def events_of(client: RedisCluster, user: str) -> list[tuple[str, str]]:
    """Every event of a user still in its partition's stream, oldest first: (id, type)."""
    stream = keys.events_key(keys.partition_of(user, PARTITIONS))
    return [(entry_id, fields["type"]) for entry_id, fields in client.xrange(stream) if fields["user"] == user]


@pytest.fixture
def audit(redis_client: RedisCluster) -> Iterator[str]:
    """A consumer group that reads nothing, so the aggregator's trimming keeps every event from now on."""
    group = f"audit-{uuid.uuid4().hex[:8]}"
    on_every_partition(
        redis_client, PARTITIONS, lambda pipe, p: pipe.xgroup_create(keys.events_key(p), group, "$", True)
    )
    yield group
    on_every_partition(redis_client, PARTITIONS, lambda pipe, p: pipe.xgroup_destroy(keys.events_key(p), group))
