"""`profilemesh`: argument parsing and the gRPC API commands (through profilemesh.client); `main()` is the
console script's entry point."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable
from typing import Any, TypeAlias

from common.errors import ConfigError
from profilemesh.client import ProfileClient, ProfilemeshError, ReportingClient, RetryPolicy, Tls, Unavailable
from profilemesh_cli import migrate, status, watch
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


def _tls(endpoints: Endpoints) -> Tls | None:
    settings = endpoints.settings
    if not settings.grpc_ca_file:
        return None
    return Tls(settings.grpc_ca_file, settings.grpc_cert_file or None, settings.grpc_key_file or None)


def _profiles(endpoints: Endpoints) -> ProfileClient:
    return ProfileClient(endpoints.settings.profile_target, tls=_tls(endpoints), retry=RetryPolicy(CALL_TIMEOUT_S))


def _reporting(endpoints: Endpoints) -> ReportingClient:
    return ReportingClient(endpoints.settings.reporting_target, tls=_tls(endpoints), retry=RetryPolicy(CALL_TIMEOUT_S))


def _show(data: dict[str, Any], as_json: bool, human: Callable[[dict[str, Any]], str]) -> None:
    """JSON as proto3 JSON renders the replies (64-bit integers as strings), as the command always printed."""
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
    with _reporting(endpoints) as reporting:
        scores = reporting.top(args.n)
    data = {"results": [{"user": s.user, "score": str(s.score)} for s in scores]}
    _show(
        data,
        args.json,
        lambda d: "\n".join(f"{r['score']:>8}  {r['user']}" for r in d["results"]) or "no reads counted yet",
    )
    return 0


def cmd_stats(args: argparse.Namespace, endpoints: Endpoints) -> int:
    with _reporting(endpoints) as reporting:
        reads = reporting.stats(args.user)
    _show({"user": args.user, "reads": str(reads)}, args.json, lambda d: f"{d['user']}: {d['reads']} reads")
    return 0


def cmd_profile(args: argparse.Namespace, endpoints: Endpoints) -> int:
    with _profiles(endpoints) as profiles:
        if args.action == "get":
            profile = profiles.get(args.user)
            data = {"user": profile.user, "fields": profile.fields}
            _show(data, args.json, lambda d: "\n".join(f"{k}: {v}" for k, v in sorted(d["fields"].items())))
            return 0
        if args.action == "delete":
            profiles.delete(args.user)
            message = f"Profile deleted for {args.user}"
        else:
            fields = _fields(args.fields)
            if not fields:
                raise UsageError(f"profile {args.action} needs at least one NAME=VALUE field")
            if args.action == "create":
                profiles.create(args.user, fields)
                message = f"Profile created for: {args.user}"
            else:
                profiles.update(args.user, fields)
                message = f"Profile updated for {args.user}"
    _show({"message": message}, args.json, lambda d: d["message"])
    return 0


def cmd_watch(args: argparse.Namespace, endpoints: Endpoints) -> int:
    return watch.watch(endpoints, args.interval, args.count)


# The subcommands' parsers, as argparse.add_subparsers returns them: argparse names no public type for it, and
# its class is not subscriptable at run time.
Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
Handler = Callable[[argparse.Namespace, Endpoints], int]


def _command(
    commands: Commands, name: str, handler: Handler, help_text: str, json_flag: bool = True
) -> argparse.ArgumentParser:
    """Add subcommand `name`, run by `handler(args, endpoints)`; with `json_flag`, its --json option."""
    sub = commands.add_parser(name, help=help_text, description=help_text)
    if json_flag:
        sub.add_argument("--json", action="store_true", help="machine-readable JSON output")
    sub.set_defaults(handler=handler)
    return sub


def _add_status(commands: Commands) -> None:
    _command(
        commands,
        "status",
        cmd_status,
        "health of every component and replica, the cluster's nodes and each "
        "partition's stream, pending entries and aggregator lag; exits 1 when anything is unhealthy",
    )


def _add_reads(commands: Commands) -> None:
    top_n = _command(commands, "top", cmd_top, "the N most read profiles")
    top_n.add_argument("n", type=int, metavar="N", help="how many (1 to 1000)")
    stats = _command(commands, "stats", cmd_stats, "how often a user's profile was read")
    stats.add_argument("user")


def _add_profile(commands: Commands) -> None:
    profile = _command(commands, "profile", cmd_profile, "get, create, update or delete a profile", json_flag=False)
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


def _add_watch(commands: Commands) -> None:
    live = _command(
        commands,
        "watch",
        cmd_watch,
        "a live view of requests/s, errors/s, p99 and aggregator lag per component, from their metrics; Ctrl-C ends it",
        json_flag=False,
    )
    live.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes (default 1)")
    live.add_argument("--count", type=int, default=None, help="stop after this many refreshes")


# Each adds its subcommands, in the order --help lists them; a new command is one more function here.
SUBCOMMANDS: tuple[Callable[[Commands], None], ...] = (
    _add_status,
    _add_reads,
    _add_profile,
    _add_watch,
    migrate.add_command,
)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="profilemesh",
        description="Look at and use a running profilemesh. Finds it through the same PROFILEMESH_* variables "
        "as the services (defaults: the ports of `make run`).",
    )
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(commands)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        endpoints = Endpoints.from_env()
        handler: Handler = args.handler
        return handler(args, endpoints)
    except (UsageError, ConfigError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except ProfilemeshError as error:
        if isinstance(error, Unavailable) and not error.reason and "connect" in error.message.lower():
            print(f"error: nothing answers at {error.message} — is profilemesh running (make run)?", file=sys.stderr)
            return 2
        print(f"error: {error.code.name}: {error.message}", file=sys.stderr)
        return 1
