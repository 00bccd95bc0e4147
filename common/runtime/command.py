"""The components' console scripts take no arguments: settings come from PROFILEMESH_* environment variables."""

from __future__ import annotations

import sys

USAGE = """usage: {program} [--help]

Runs profilemesh's {component} until SIGTERM or SIGINT, then drains and exits.
It takes no arguments: every setting is a PROFILEMESH_* environment variable
(see the Configuration table of README.md); unset ones take their local default.
"""


def parse_arguments(program: str, component: str, argv: list[str] | None = None) -> None:
    """Answer --help and refuse anything else, before any setting is read or port opened."""
    arguments = sys.argv[1:] if argv is None else argv
    if not arguments:
        return
    if arguments in (["--help"], ["-h"]):
        print(USAGE.format(program=program, component=component), end="")
        raise SystemExit(0)
    print(USAGE.format(program=program, component=component), end="", file=sys.stderr)
    raise SystemExit(f"{program}: unexpected arguments {' '.join(arguments)!r}; settings are environment variables")
