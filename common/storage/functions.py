"""The services' Lua as Redis/Valkey functions: one library per component, versioned, loaded by an admin step.

The .lua files in each service's scripts/ directory stay the source. Each becomes one function of its
component's library: its text is the body of `function(KEYS, ARGV) ... end` (so it reads its keys and
arguments as a script does), and common/storage/shared.lua and the directory's helpers.lua become the
library's local functions, shared by all of them instead of being prepended to each.

Services never load code (their ACL users may not: common/storage/acl.py); `profilemesh cluster migrate`
(profilemesh_cli/migrate.py) loads the libraries as the admin, and a service refuses to start while its
library is missing. The version is a hash of the library's text, and the library's and every function's name
carry it, so during a rolling upgrade old and new processes each call their own functions, side by side.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path

from common.storage.scripts import HELPERS, preludes

# Where each component's scripts live, relative to the installed packages (pyproject.toml ships the .lua files).
_PACKAGES = Path(__file__).resolve().parents[2]
DIRECTORIES = {
    "profile": _PACKAGES / "profile_svc" / "scripts",
    "aggregator": _PACKAGES / "aggregator_svc" / "scripts",
    "reporting": _PACKAGES / "reporting_svc" / "scripts",
}
# Every library this project loads is named PREFIX<component>_<version>; `migrate --prune` removes only those.
PREFIX = "profilemesh_"
# Functions that write nothing: flagged no-writes, so they run with FCALL_RO (the only FCALL the reporting user
# has), also on a replica, and never refused on a full node.
NO_WRITES = frozenset({"top_readers", "partition_totals", "top_readers_on_node", "totals_on_node"})
# Functions that read many partitions of one node in one call: flagged allow-cross-slot-keys, they take one key
# (routing the call) and read the others, passed as arguments; a key the node does not serve fails the call.
CROSS_SLOT = frozenset({"top_readers_on_node", "totals_on_node", "lag_on_node"})
# Each library's own no-writes function, returning the library's name: what a service calls on every primary
# at start to learn that its version is loaded there (with the rights it already has, FCALL or FCALL_RO).
CHECK = "loaded"
VERSION_CHARS = 10


@dataclass(frozen=True)
class Function:
    """One function of a library, by the name FCALL calls it; `stem` (the .lua file's) names it in metrics."""

    name: str
    stem: str
    library: str
    read_only: bool

    @property
    def command(self) -> str:
        return "FCALL_RO" if self.read_only else "FCALL"


@dataclass(frozen=True)
class Library:
    component: str
    name: str
    version: str
    source: str  # FUNCTION LOAD's text
    functions: dict[str, Function]  # by stem, CHECK included

    @property
    def check(self) -> Function:
        return self.functions[CHECK]


def _body(text: str) -> str:
    return "\n".join("  " + line if line else line for line in text.rstrip("\n").split("\n"))


@functools.cache
def library(component: str) -> Library:
    """The library of `component` ('profile', 'aggregator', 'reporting'), made from its scripts directory."""
    directory = DIRECTORIES[component]
    scripts = sorted(path for path in directory.glob("*.lua") if path.name != HELPERS)
    stems = [path.stem for path in scripts]
    if CHECK in stems:
        raise ValueError(f"{directory}: {CHECK}.lua would shadow the library's own check function")
    parts = [
        f"-- The {component} library, made by common/storage/functions.py from {directory.parent.name}/scripts/.",
        "-- Loaded by `profilemesh cluster migrate`; never edit it on a server.",
        *preludes(directory),
    ]
    for path in scripts:
        parts.append(f"\n-- {directory.parent.name}/scripts/{path.name}\nlocal function {path.stem}(KEYS, ARGV)")
        parts.append(_body(path.read_text()) + "\nend")
    template = "\n".join(parts)
    registrations = [(stem, stem in NO_WRITES) for stem in stems] + [(CHECK, True)]
    cross_slot = sorted(CROSS_SLOT & set(stems))
    version = hashlib.sha256(
        # The flags are part of what a version is (allow-cross-slot-keys only where some function has it).
        (template + repr(registrations) + (repr(cross_slot) if cross_slot else "")).encode()
    ).hexdigest()[:VERSION_CHARS]
    name = f"{PREFIX}{component}_{version}"
    lines = [f"#!lua name={name}", template, ""]
    functions: dict[str, Function] = {}
    # A library's check is called the way its other functions are (a user with only FCALL can't FCALL_RO).
    only_reads = all(read_only for _, read_only in registrations)
    for stem, read_only in registrations:
        function = Function(f"{stem}_{version}", stem, name, only_reads if stem == CHECK else read_only)
        functions[stem] = function
        flags = ", ".join(["'no-writes'"] * read_only + ["'allow-cross-slot-keys'"] * (stem in CROSS_SLOT))
        callback = f"function() return '{name}' end" if stem == CHECK else stem
        lines.append(
            f"redis.register_function{{function_name='{function.name}', callback={callback}, flags={{{flags}}}}}"
        )
    return Library(component, name, version, "\n".join(lines) + "\n", functions)


def libraries() -> list[Library]:
    return [library(component) for component in DIRECTORIES]


def library_of(path: Path) -> Library:
    """The library holding the function made from the .lua file at `path`."""
    directory = path.resolve().parent
    for component, where in DIRECTORIES.items():
        if where.resolve() == directory:
            return library(component)
    raise ValueError(f"{path} is in no component's scripts directory")


def function(path: Path) -> Function:
    """The function made from the .lua file at `path` (e.g. profile_svc/scripts/get_profile.lua)."""
    return library_of(path).functions[path.stem]


def is_missing(error: BaseException) -> bool:
    """Whether an error reply says the function called is not loaded (Redis 7 and Valkey: "Function not found")."""
    return "function not found" in str(error).lower()
