"""`profilemesh`: argument parsing and the gRPC API commands; `main()` is the console script's entry point."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable
from typing import Any, cast

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message

from common import grpc_tls
from common.config import ConfigError
from profilemesh.profile.v1 import profile_pb2, profile_pb2_grpc
from profilemesh.reporting.v1 import reporting_pb2, reporting_pb2_grpc
from profilemesh_cli import status, watch
from profilemesh_cli.endpoints import Endpoints

CALL_TIMEOUT_S = 5.0


class UsageError(Exception):
    pass


def _fields(pairs: list[str]) -> dict[str, str]:
    fields = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise UsageError(f"fields are NAME=VALUE, got {pair!r}")
        fields[name] = value
    return fields


def _call(endpoints: Endpoints, target: str, stub_class: type, method: str, request: Message) -> Message:
    with grpc_tls.sync_channel(target, endpoints.settings) as channel:
        return getattr(stub_class(channel), method)(request, timeout=CALL_TIMEOUT_S)


def _show(reply: Message, as_json: bool, human: Callable[[dict[str, Any]], str]) -> None:
    data = json_format.MessageToDict(reply, always_print_fields_with_no_presence=True)
    print(json.dumps(data, indent=2) if as_json else human(data))


def cmd_status(args: argparse.Namespace, endpoints: Endpoints) -> int:
    report = asyncio.run(status.gather(endpoints))
    if report.nothing_running:
        print(
            f"error: nothing is running: no component answers and the cluster does not answer at "
            f"{endpoints.settings.redis_url.split('@')[-1]} (start it with `make run`)",
            file=sys.stderr,
        )
        return 2
    print(status.as_json(report) if args.json else status.render(report))
    return 1 if report.problems else 0


def cmd_top(args: argparse.Namespace, endpoints: Endpoints) -> int:
    reply = _call(
        endpoints,
        endpoints.settings.reporting_target,
        reporting_pb2_grpc.ReportingServiceStub,
        "GetTopProfiles",
        reporting_pb2.GetTopProfilesRequest(limit=args.n),
    )
    _show(
        reply,
        args.json,
        lambda d: "\n".join(f"{r['score']:>8}  {r['user']}" for r in d["results"]) or "no reads counted yet",
    )
    return 0


def cmd_stats(args: argparse.Namespace, endpoints: Endpoints) -> int:
    reply = _call(
        endpoints,
        endpoints.settings.reporting_target,
        reporting_pb2_grpc.ReportingServiceStub,
        "GetProfileStats",
        reporting_pb2.GetProfileStatsRequest(user=args.user),
    )
    _show(reply, args.json, lambda d: f"{d['user']}: {d['reads']} reads")
    return 0


def cmd_profile(args: argparse.Namespace, endpoints: Endpoints) -> int:
    target, stub = endpoints.settings.profile_target, profile_pb2_grpc.ProfileServiceStub
    if args.action == "get":
        reply = _call(endpoints, target, stub, "GetProfile", profile_pb2.GetProfileRequest(user=args.user))
        _show(reply, args.json, lambda d: "\n".join(f"{k}: {v}" for k, v in sorted(d["fields"].items())))
        return 0
    if args.action == "delete":
        reply = _call(endpoints, target, stub, "DeleteProfile", profile_pb2.DeleteProfileRequest(user=args.user))
    else:
        fields = _fields(args.fields)
        if not fields:
            raise UsageError(f"profile {args.action} needs at least one NAME=VALUE field")
        method, request_class = (
            ("CreateProfile", profile_pb2.CreateProfileRequest)
            if args.action == "create"
            else ("UpdateProfile", profile_pb2.UpdateProfileRequest)
        )
        reply = _call(endpoints, target, stub, method, request_class(user=args.user, fields=fields))
    _show(reply, args.json, lambda d: d["message"])
    return 0


def cmd_watch(args: argparse.Namespace, endpoints: Endpoints) -> int:
    return watch.watch(endpoints, args.interval, args.count)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="profilemesh",
        description="Look at and use a running profilemesh. Finds it through the same PROFILEMESH_* variables "
        "as the services (defaults: the ports of `make run`).",
    )
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, handler: Callable, help_text: str, json_flag: bool = True) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        if json_flag:
            sub.add_argument("--json", action="store_true", help="machine-readable JSON output")
        sub.set_defaults(handler=handler)
        return sub

    command(
        "status",
        cmd_status,
        "health of every component and replica, the cluster's nodes and each "
        "partition's stream, pending entries and aggregator lag; exits 1 when anything is unhealthy",
    )
    top_n = command("top", cmd_top, "the N most read profiles")
    top_n.add_argument("n", type=int, metavar="N", help="how many (1 to 1000)")
    stats = command("stats", cmd_stats, "how often a user's profile was read")
    stats.add_argument("user")
    profile = command("profile", cmd_profile, "get, create, update or delete a profile", json_flag=False)
    actions = profile.add_subparsers(dest="action", required=True, metavar="ACTION")
    for action, help_text in (
        ("get", "show a profile"),
        ("create", "create a profile from NAME=VALUE fields"),
        ("update", "change fields of a profile (others are kept)"),
        ("delete", "delete a profile"),
    ):
        sub = actions.add_parser(action, help=help_text, description=help_text)
        sub.add_argument("user")
        if action in ("create", "update"):
            sub.add_argument("fields", nargs="*", metavar="NAME=VALUE")
        sub.add_argument("--json", action="store_true", help="machine-readable JSON output")
    live = command(
        "watch",
        cmd_watch,
        "a live view of requests/s, errors/s, p99 and aggregator lag per component, from their metrics; Ctrl-C ends it",
        json_flag=False,
    )
    live.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes (default 1)")
    live.add_argument("--count", type=int, default=None, help="stop after this many refreshes")
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        endpoints = Endpoints.from_env()
        return args.handler(args, endpoints)
    except (UsageError, ConfigError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except grpc.RpcError as error:
        call = cast(grpc.Call, error)  # what a failed call raises is both
        code = call.code()
        if code == grpc.StatusCode.UNAVAILABLE and "connect" in (call.details() or "").lower():
            print(f"error: nothing answers at {call.details()} — is profilemesh running (make run)?", file=sys.stderr)
            return 2
        print(f"error: {code.name}: {call.details()}", file=sys.stderr)
        return 1
