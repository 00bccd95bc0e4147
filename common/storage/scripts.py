"""Lua scripts from files: each service keeps its scripts in its scripts/ directory.

Redis scripts can't import one another, so what a directory's scripts share lives in its helpers.lua,
which is put before each script's own text. Every script goes through script_source, the services'
(Cluster.script) and the tests' alike, so what runs is what is tested.
"""

from __future__ import annotations

from pathlib import Path

HELPERS = "helpers.lua"


def script_source(path: Path) -> str:
    """The script at `path`, after its directory's helpers.lua when there is one."""
    helpers = path.parent / HELPERS
    own = path.read_text()
    return helpers.read_text() + "\n" + own if helpers.exists() and path.name != HELPERS else own
