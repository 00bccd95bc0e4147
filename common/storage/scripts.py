"""Lua scripts from files: each service keeps its scripts in its scripts/ directory.

What a directory's scripts share lives in its helpers.lua. The services run them as functions, one library
per directory with helpers.lua as its local functions (common/storage/functions.py); script_source gives one
file as a self-contained script, helpers.lua before its text, for what still compares the two
(bench/functions_cost.py).
"""

from __future__ import annotations

from pathlib import Path

HELPERS = "helpers.lua"


def script_source(path: Path) -> str:
    """The script at `path`, after its directory's helpers.lua when there is one."""
    helpers = path.parent / HELPERS
    own = path.read_text()
    return helpers.read_text() + "\n" + own if helpers.exists() and path.name != HELPERS else own
