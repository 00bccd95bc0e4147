"""The one script loader: the shared Lua, then a directory's helpers.lua, before each of its scripts."""

from __future__ import annotations

from pathlib import Path

from aggregator_svc.aggregator import APPLY_SCRIPT, RECOUNT_SCRIPT, TRIM_SCRIPT
from common.storage.functions import library
from common.storage.scripts import SHARED, script_source
from profile_svc.profiles import SCRIPTS as PROFILE_SCRIPTS
from reporting_svc.reports import SCRIPTS as REPORTING_SCRIPTS

SHARED_TEXT = SHARED.read_text().rstrip("\n")


def test_the_shared_lua_then_the_helpers_come_first(tmp_path: Path) -> None:
    (tmp_path / "helpers.lua").write_text("local function two() return 2 end")
    (tmp_path / "main.lua").write_text("return two()")
    assert script_source(tmp_path / "main.lua") == f"{SHARED_TEXT}\nlocal function two() return 2 end\nreturn two()"


def test_a_directory_without_helpers_gets_the_shared_lua_alone(tmp_path: Path) -> None:
    (tmp_path / "main.lua").write_text("return 1")
    assert script_source(tmp_path / "main.lua") == f"{SHARED_TEXT}\nreturn 1"


def test_profile_scripts_append_events_through_the_helper() -> None:
    for script in ("write_profile.lua", "get_profile.lua", "delete_profile.lua"):
        source = script_source(PROFILE_SCRIPTS / script)
        assert (PROFILE_SCRIPTS / "helpers.lua").read_text().rstrip("\n") in source
        own = (PROFILE_SCRIPTS / script).read_text()
        assert "append_event(KEYS[2], KEYS[3], ARGV[1]," in own and "XADD" not in own


def test_every_library_holds_the_shared_lua_once_and_no_script_defines_it_again() -> None:
    """`field` and `older` live in one place; a script or helpers.lua defining them again would shadow it."""
    for component in ("profile", "aggregator", "reporting"):
        assert library(component).source.count(SHARED_TEXT) == 1
    for path in (APPLY_SCRIPT, RECOUNT_SCRIPT, TRIM_SCRIPT, PROFILE_SCRIPTS / "events_after.lua"):
        own = path.read_text()
        assert "local function field(" not in own and "local function older(" not in own


def test_reporting_scripts_have_no_helpers_of_their_own() -> None:
    path = REPORTING_SCRIPTS / "top_readers.lua"
    assert script_source(path) == f"{SHARED_TEXT}\n{path.read_text()}"
