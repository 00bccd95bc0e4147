"""The one script loader: a directory's helpers.lua before each of its scripts."""

from __future__ import annotations

from pathlib import Path

import pytest

from aggregator_svc.aggregator import APPLY_SCRIPT, RECOUNT_SCRIPT, TRIM_SCRIPT
from aggregator_svc.aggregator import SCRIPTS as AGGREGATOR_SCRIPTS
from common.storage.scripts import script_source
from profile_svc.profiles import SCRIPTS as PROFILE_SCRIPTS
from reporting_svc.reports import SCRIPTS as REPORTING_SCRIPTS


def test_helpers_come_first(tmp_path: Path) -> None:
    (tmp_path / "helpers.lua").write_text("local function two() return 2 end")
    (tmp_path / "main.lua").write_text("return two()")
    assert script_source(tmp_path / "main.lua") == "local function two() return 2 end\nreturn two()"


def test_a_directory_without_helpers(tmp_path: Path) -> None:
    (tmp_path / "main.lua").write_text("return 1")
    assert script_source(tmp_path / "main.lua") == "return 1"


def test_helpers_are_not_put_before_themselves(tmp_path: Path) -> None:
    (tmp_path / "helpers.lua").write_text("local x = 1")
    assert script_source(tmp_path / "helpers.lua") == "local x = 1"


@pytest.mark.parametrize("script", ["write_profile.lua", "get_profile.lua", "delete_profile.lua"])
def test_profile_scripts_append_events_through_the_helper(script: str) -> None:
    source = script_source(PROFILE_SCRIPTS / script)
    assert source.startswith((PROFILE_SCRIPTS / "helpers.lua").read_text())
    own = (PROFILE_SCRIPTS / script).read_text()
    assert "append_event(KEYS[2], ARGV[1]," in own and "XADD" not in own


def test_the_aggregators_scripts_get_its_helpers() -> None:
    for path in (APPLY_SCRIPT, RECOUNT_SCRIPT, TRIM_SCRIPT):
        assert script_source(path).startswith((AGGREGATOR_SCRIPTS / "helpers.lua").read_text())


def test_reporting_scripts_have_no_helpers() -> None:
    path = REPORTING_SCRIPTS / "top_readers.lua"
    assert script_source(path) == path.read_text()
