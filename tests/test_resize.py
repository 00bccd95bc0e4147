"""Changing the partition count (`profilemesh cluster resize`, common/storage/resize.py; docs/deploying.md §6).

A deployment grown from 16 to 64 partitions, then shrunk to 8 through a resize that stopped part way, keeps every
profile and every count (deleted users stay deleted), and goes on counting exactly in the new layout: all checked through
the public API against a model of the operations performed (tests/helpers.py expected_statistics).
"""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from redis.cluster import RedisCluster

from common.storage import keys
from common.storage.resize import Report, ResizeRefused, resize
from localdev.system import System
from profilemesh.profile.v1 import profile_pb2, profile_pb2_grpc
from profilemesh.reporting.v1 import reporting_pb2, reporting_pb2_grpc
from tests.conftest import TEST_SETTINGS, running_system
from tests.helpers import aggregator_settled, expected_statistics, wait_until

USERS = [f"resize-{n:03d}" for n in range(240)]
TIMEOUT_S = 10
KINDS = ("create", "read", "update", "delete")


class Model:
    """What the deployment must hold: each profile's fields, and the events in the order they were made."""

    def __init__(self) -> None:
        self.profiles: dict[str, dict[str, str]] = {}
        self.history: list[tuple[str, str]] = []


@pytest.fixture(scope="module")
def resized(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    settings = {**TEST_SETTINGS, "PROFILEMESH_PARTITIONS": "16"}
    with running_system(tmp_path_factory.mktemp("resize"), settings) as system:
        yield system


def _profiles(system: System) -> profile_pb2_grpc.ProfileServiceStub:
    return profile_pb2_grpc.ProfileServiceStub(system.grpc_channel(system.profile_port))


def _operate(system: System, model: Model, rng: random.Random, count: int) -> None:
    """`count` operations, one at a time, on users drawn at random: creates of absent users; reads, updates and
    deletes of present ones."""
    stub = _profiles(system)
    for _ in range(count):
        user = rng.choice(USERS)
        if user not in model.profiles:
            fields = {"city": rng.choice(["Lyon", "Oslo", "Porto"]), "n": str(rng.randrange(1000))}
            stub.CreateProfile(profile_pb2.CreateProfileRequest(user=user, fields=fields), timeout=TIMEOUT_S)
            model.profiles[user] = fields
            model.history.append((user, "create"))
            continue
        kind = rng.choices(["read", "update", "delete"], weights=[6, 3, 1])[0]
        if kind == "read":
            profile = stub.GetProfile(profile_pb2.GetProfileRequest(user=user), timeout=TIMEOUT_S)
            assert dict(profile.fields) == model.profiles[user]
        elif kind == "update":
            change = {"n": str(rng.randrange(1000))}
            stub.UpdateProfile(profile_pb2.UpdateProfileRequest(user=user, fields=change), timeout=TIMEOUT_S)
            model.profiles[user] = {**model.profiles[user], **change}
        else:
            stub.DeleteProfile(profile_pb2.DeleteProfileRequest(user=user), timeout=TIMEOUT_S)
            del model.profiles[user]
        model.history.append((user, kind))


def _check_profiles(system: System, model: Model) -> None:
    """Every user's profile as the model has it, or NOT_FOUND; each profile found counts a read."""
    reply = _profiles(system).BatchGetProfiles(profile_pb2.BatchGetProfilesRequest(users=USERS), timeout=TIMEOUT_S)
    held = {r.profile.user: dict(r.profile.fields) for r in reply.results if r.HasField("profile")}
    missing = {u for u, r in zip(USERS, reply.results, strict=True) if r.HasField("error")}
    assert held == model.profiles
    assert missing == set(USERS) - set(model.profiles)
    model.history.extend((user, "read") for user in USERS if user in model.profiles)


def _statistics(system: System) -> tuple[dict[str, int], dict[str, int], dict[str, int]]:
    """The top list, the totals, and each user's reads as GetProfileStats finds them in the user's partition."""
    stub = reporting_pb2_grpc.ReportingServiceStub(system.grpc_channel(system.reporting_port))
    top = stub.GetTopProfiles(reporting_pb2.GetTopProfilesRequest(limit=1000), timeout=TIMEOUT_S).results
    totals = stub.GetOperationTotals(reporting_pb2.GetOperationTotalsRequest(), timeout=TIMEOUT_S)
    each = {user: stub.GetProfileStats(reporting_pb2.GetProfileStatsRequest(user=user)).reads for user in USERS}
    return (
        {r.user: r.score for r in top},
        {kind: getattr(totals, kind) for kind in KINDS},
        {user: reads for user, reads in each.items() if reads},
    )


def _wait_statistics(system: System, model: Model) -> None:
    scores, totals = expected_statistics(model.history)
    expected = (scores, {kind: totals.get(kind, 0) for kind in KINDS}, scores)
    wait_until(lambda: _statistics(system) == expected, timeout_s=30, what="the statistics to match the model")


def _resize(system: System, partitions: int) -> Report:
    return asyncio.run(resize(system.client_settings(), partitions))


def _layout_record(admin: RedisCluster) -> str:
    return str(admin.get(keys.PARTITIONS_KEY))


def _tags(admin: RedisCluster) -> set[str]:
    """The partition tags of every key the cluster holds."""
    found = admin.scan_iter(match="*{p*}*", target_nodes=RedisCluster.PRIMARIES)
    return {key[key.index("{") : key.index("}") + 1] for key in found}


def _refused_start(system: System, tmp: Path, partitions: int, why: str) -> None:
    """A profile_svc started now exits at once, saying `why`."""
    process = system.start_process("refused", "profile_svc", PROFILEMESH_PARTITIONS=str(partitions))
    try:
        assert process.wait(timeout=30) != 0
    finally:
        system.stop_process("refused")
    assert system.log_dir is not None
    assert why in (system.log_dir / "refused.log").read_text()


def _first_token(system: System) -> str:
    call = _profiles(system).WatchProfileEvents(profile_pb2.WatchProfileEventsRequest(), timeout=TIMEOUT_S)
    try:
        return next(iter(call)).resume_token
    finally:
        call.cancel()


def test_a_resize_keeps_every_profile_count_and_tombstone_and_counting_goes_on(resized: System, tmp_path: Path) -> None:
    system, model, rng = resized, Model(), random.Random(23)
    admin = system.cluster.client(decode_responses=True)
    _operate(system, model, rng, 1500)
    _check_profiles(system, model)
    _wait_statistics(system, model)
    assert any(kind == "delete" for _, kind in model.history), "the history must hold deletes (tombstones)"
    token = _first_token(system)

    # Running services are refused, and nothing changes: as an operator sees it.
    refused = _profilemesh(system, "cluster", "resize", "--partitions", "64")
    assert refused.returncode == 1 and "error: not resized: stop every service first" in refused.stderr
    assert _layout_record(admin) == "16"

    system.stop_services()
    # An aggregator's word that it is live lasts three heartbeats after it stops.
    report = wait_until(lambda: _try_resize(system, 64), timeout_s=15, what="the resize to be allowed")
    print(f"16 -> 64: {report}")
    assert report.copied == report.check
    assert report.copied.profiles == len(model.profiles)
    assert _layout_record(admin) == "64 g1"
    assert {tag.endswith(".g1}") for tag in _tags(admin)} == {True}, "the old keyspace is removed"
    _refused_start(system, tmp_path, 16, "the partition count changes only by `profilemesh cluster resize`")

    system.settings["PROFILEMESH_PARTITIONS"] = "64"
    system.start_services()
    _wait_statistics(system, model)
    _check_profiles(system, model)
    # `profilemesh status` follows the recorded layout, whatever count its own settings say.
    status = json.loads(_profilemesh(system, "status", "--json", PROFILEMESH_PARTITIONS="16").stdout)
    assert [p["partition"] for p in status["partitions"]] == list(range(64))
    assert all(p["primary"] and {"length", "lag"} <= p.keys() for p in status["partitions"])
    with pytest.raises(grpc.RpcError) as refused:
        next(iter(_profiles(system).WatchProfileEvents(profile_pb2.WatchProfileEventsRequest(resume_token=token))))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "resized" in str(refused.value.details())
    _operate(system, model, rng, 600)
    _wait_statistics(system, model)

    # A resize that stopped once it had marked the record (its copy half done, or not begun): the services
    # refuse to start, and running it again finishes it.
    system.stop_services()
    admin.set(keys.PARTITIONS_KEY, "64 g1 -> 8 g2")
    _refused_start(system, tmp_path, 64, "being resized from 64 to 8")
    with pytest.raises(ResizeRefused, match="with --partitions 8 to finish it"):
        _resize(system, 32)
    done = _profilemesh(system, "cluster", "resize", "--partitions", "8", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    print(f"64 -> 8: {report}")
    assert (report["source"], report["target"]) == (
        {"partitions": 64, "generation": 1},
        {"partitions": 8, "generation": 2},
    )
    assert report["copied"] == report["check"] and report["copied"]["profiles"] == len(model.profiles)
    assert _layout_record(admin) == "8 g2"
    assert {tag.endswith(".g2}") for tag in _tags(admin)} == {True}

    system.settings["PROFILEMESH_PARTITIONS"] = "8"
    system.start_services()
    _wait_statistics(system, model)
    _check_profiles(system, model)
    _operate(system, model, rng, 300)
    _wait_statistics(system, model)
    admin.close()


def _profilemesh(system: System, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """The `profilemesh` command as an operator runs it, as the cluster's admin."""
    return subprocess.run(
        [sys.executable, "-m", "profilemesh_cli", *args],
        env={**system.client_env(None), **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _try_resize(system: System, partitions: int) -> Report | None:
    try:
        return _resize(system, partitions)
    except ResizeRefused as error:
        if "aggregator replica is still live" in str(error):
            return None
        raise


def test_a_resize_waits_for_every_event_to_be_applied(tmp_path: Path) -> None:
    """Events the aggregator has not applied would be counts lost: the resize refuses until they are."""
    settings = {**TEST_SETTINGS, "PROFILEMESH_PARTITIONS": "16"}
    with running_system(tmp_path, settings) as system:
        system.stop_process("aggregator_svc")
        stub = _profiles(system)
        for n in range(50):
            stub.CreateProfile(profile_pb2.CreateProfileRequest(user=f"late-{n}", fields={"n": "1"}), timeout=TIMEOUT_S)
        system.stop_services()
        refused = wait_until(lambda: _refusal(system, 32, "events left to apply"), timeout_s=15, what="the refusal")
        assert "run the aggregator alone until its lag is 0" in refused
        admin = system.cluster.client(decode_responses=True)
        assert _layout_record(admin) == "16"

        system.start_process("aggregator_svc", "aggregator_svc")  # alone, as docs/deploying.md §6 says
        wait_until(lambda: _refusal(system, 32, "still connected: profilemesh-aggregator"), what="its refusal")
        wait_until(lambda: aggregator_settled(admin, 16), timeout_s=30, what="the aggregator's lag to reach 0")
        system.stop_process("aggregator_svc")
        report = wait_until(lambda: _try_resize(system, 32), timeout_s=15, what="the resize to be allowed")
        assert report.copied.totals == {"create": 50}
        assert _layout_record(admin) == "32 g1"
        admin.close()


def _refusal(system: System, partitions: int, containing: str) -> str | None:
    """The resize's refusal when it says `containing`; None for any other refusal."""
    try:
        report = _resize(system, partitions)
    except ResizeRefused as error:
        return str(error) if containing in str(error) else None
    raise AssertionError(f"resized when it should have refused ({containing}): {report}")
