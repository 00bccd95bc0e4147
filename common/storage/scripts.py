"""Lua from files: each service keeps its scripts in its scripts/ directory.

What every component's Lua shares lives in common/storage/shared.lua, what one directory's scripts share in
its helpers.lua. The services run them as functions, one library per directory with both as its local
functions (common/storage/functions.py); script_source gives one file as a self-contained script, the two
before its text, for what still compares the two (bench/functions_cost.py).
"""

from __future__ import annotations

from pathlib import Path

HELPERS = "helpers.lua"
SHARED = Path(__file__).parent / "shared.lua"


def preludes(directory: Path) -> list[str]:
    """The local functions every script of `directory` may call: the shared ones, then its own helpers."""
    helpers = directory / HELPERS
    return [SHARED.read_text().rstrip("\n")] + ([helpers.read_text().rstrip("\n")] if helpers.exists() else [])


def script_source(path: Path) -> str:
    """The script at `path` as one self-contained script: its directory's preludes, then its own text."""
    return "\n".join([*preludes(path.parent), path.read_text()])
