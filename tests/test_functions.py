"""The functions' admin step, `profilemesh cluster migrate`: idempotent, every primary, replicas by replication, a
flushed primary loaded again, other versions kept until --prune, and a failover keeps the functions.

The module's own system (fresh_system): these tests flush, prune and fail over its cluster.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid

import grpc
import pytest
import redis

from common.storage import functions, keys
from localdev.system import System
from profilemesh.profile.v1 import profile_pb2, profile_pb2_grpc
from profilemesh_cli import migrate
from tests.conftest import PARTITIONS
from tests.helpers import wait_until

WANTED = {library.name for library in functions.libraries()}


def _libraries(node: redis.Redis) -> set[str]:
    entries = [dict(zip(e[::2], e[1::2], strict=True)) for e in node.function_list(f"{functions.PREFIX}*")]
    return {entry["library_name"] for entry in entries}


def _roles(system: System) -> dict[int, str]:
    return {index: system.cluster.node(index).info("replication")["role"] for index in range(len(system.cluster.ports))}


def _outcomes(changes: list[migrate.Change]) -> dict[tuple[str, str], str]:
    return {(change.node, change.library): change.outcome for change in changes}


def _address(system: System, index: int) -> str:
    return f"{system.cluster.host(index)}:{system.cluster.ports[index]}"


def test_migrate_is_idempotent_and_says_what_it_did(fresh_system: System) -> None:
    """The system's start ran it once; a second run, from the command line as an operator runs it, changes nothing."""
    done = subprocess.run(
        [sys.executable, "-m", "profilemesh_cli", "cluster", "migrate"],
        env=fresh_system.client_env(None),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    primaries = [i for i, role in _roles(fresh_system).items() if role == "master"]
    for index in primaries:
        for name in WANTED:
            assert f"{_address(fresh_system, index):<22} {name:<36} {migrate.PRESENT}" in done.stdout, done.stdout
    assert done.stdout.strip().endswith(f"3 primaries: {migrate.PRESENT} 9"), done.stdout
    again = fresh_system.migrate()
    assert {change.outcome for change in again} == {migrate.PRESENT} and len(again) == 9


def test_every_node_has_every_library_replicas_by_replication(fresh_system: System) -> None:
    """migrate writes to primaries only (a replica refuses FUNCTION LOAD); replicas have them all the same."""
    roles = _roles(fresh_system)
    assert sorted(roles.values()) == ["master"] * 3 + ["slave"] * 3
    for index in roles:
        wait_until(lambda i=index: _libraries(fresh_system.cluster.node(i)) == WANTED, what=f"node {index}'s libraries")


def test_a_primary_whose_functions_were_flushed_is_loaded_again(fresh_system: System) -> None:
    """As a new, empty primary would be: migrate loads it, and only it; its replica follows."""
    roles = _roles(fresh_system)
    flushed = next(index for index, role in roles.items() if role == "master")
    address = _address(fresh_system, flushed)
    admin = fresh_system.cluster.client()
    try:
        user = next(
            f"flushed-{n}"
            for n in range(1000)
            if admin.get_node_from_key(keys.profile_key(f"flushed-{n}", PARTITIONS)).name == address
        )
    finally:
        admin.close()
    fresh_system.cluster.node(flushed).function_flush()
    assert _libraries(fresh_system.cluster.node(flushed)) == set()
    with fresh_system.grpc_channel(fresh_system.profile_port) as channel:
        profiles = profile_pb2_grpc.ProfileServiceStub(channel)
        # Meanwhile a call there is UNAVAILABLE, naming the admin step; the services keep running.
        with pytest.raises(grpc.RpcError) as caught:
            profiles.GetProfile(profile_pb2.GetProfileRequest(user=user), timeout=10)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "profilemesh cluster migrate" in (caught.value.details() or "")
        changes = _outcomes(fresh_system.migrate())
        with pytest.raises(grpc.RpcError) as caught:
            profiles.GetProfile(profile_pb2.GetProfileRequest(user=user), timeout=10)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    fresh_system.wait_healthy(10)
    assert {outcome for (node, _), outcome in changes.items() if node == address} == {migrate.LOADED}
    assert {outcome for (node, _), outcome in changes.items() if node != address} == {migrate.PRESENT}
    assert len(changes) == 9
    for index in roles:
        wait_until(lambda i=index: _libraries(fresh_system.cluster.node(i)) == WANTED, what=f"node {index}'s libraries")


def test_other_versions_are_kept_until_pruned(fresh_system: System) -> None:
    """During a rolling upgrade the old version's processes still call theirs: kept, and removed by --prune only."""
    current = functions.library("profile")
    old_name = current.name.replace(current.version, "0" * functions.VERSION_CHARS)
    old_source = current.source.replace(current.version, "0" * functions.VERSION_CHARS)
    primaries = [i for i, role in _roles(fresh_system).items() if role == "master"]
    for index in primaries:
        fresh_system.cluster.node(index).function_load(old_source)
    kept = _outcomes(fresh_system.migrate())
    for index in primaries:
        assert kept[(_address(fresh_system, index), old_name)] == migrate.KEPT
        assert _libraries(fresh_system.cluster.node(index)) == WANTED | {old_name}
    pruned = _outcomes(asyncio.run(migrate.migrate(fresh_system.client_settings(), prune=True)))
    for index in primaries:
        assert pruned[(_address(fresh_system, index), old_name)] == migrate.PRUNED
        assert _libraries(fresh_system.cluster.node(index)) == WANTED
    assert {outcome for (_, name), outcome in pruned.items() if name != old_name} == {migrate.PRESENT}


def test_a_failover_keeps_the_functions_and_the_services_use_them(fresh_system: System) -> None:
    roles = _roles(fresh_system)
    promoted = next(index for index, role in roles.items() if role == "slave")
    fresh_system.cluster.node(promoted).execute_command("CLUSTER", "FAILOVER")
    wait_until(lambda: _roles(fresh_system)[promoted] == "master", what="the replica to be promoted")
    assert _libraries(fresh_system.cluster.node(promoted)) == WANTED
    # Once the cluster's view has it as a primary (gossip), the admin step finds it has them all already.
    changes = wait_until(
        lambda: (
            (found := _outcomes(fresh_system.migrate()))
            and _address(fresh_system, promoted) in {n for n, _ in found}
            and found
        ),
        what="the promoted replica among the primaries migrate sees",
    )
    assert {outcome for (node, _), outcome in changes.items() if node == _address(fresh_system, promoted)} == {
        migrate.PRESENT
    }
    fresh_system.wait_healthy(30)
    # Users on every shard, the promoted primary's included: each create and read runs a function there.
    with fresh_system.grpc_channel(fresh_system.profile_port) as channel:
        profiles = profile_pb2_grpc.ProfileServiceStub(channel)
        for n in range(32):
            user = f"failover-{uuid.uuid4().hex[:8]}-{n}"
            profiles.CreateProfile(profile_pb2.CreateProfileRequest(user=user, fields={"n": str(n)}), timeout=10)
            assert profiles.GetProfile(profile_pb2.GetProfileRequest(user=user), timeout=10).fields == {"n": str(n)}
