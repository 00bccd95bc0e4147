"""Settings: one declaration, checked however a Settings is made, read from an environment mapping."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from common.errors import ConfigError
from common.runtime.config import Settings, markdown_table, variable

CONFIGURATION_PAGE = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
INTEGER_SETTINGS = [f.name for f in dataclasses.fields(Settings) if f.type in ("int", int)]


def test_the_defaults_are_valid_and_fit_make_run() -> None:
    settings = Settings.from_env({})
    assert settings.redis_url == "redis://127.0.0.1:7000"
    assert (settings.partitions, settings.durability, settings.log_level) == (16, "replica", "INFO")
    assert settings.aggregator_consumer.endswith(f"-{__import__('os').getpid()}")


def test_an_environment_mapping_is_read_instead_of_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROFILEMESH_PARTITIONS", "not a number")
    assert Settings.from_env({"PROFILEMESH_PARTITIONS": "8"}).partitions == 8
    with pytest.raises(ConfigError, match="PROFILEMESH_PARTITIONS"):
        Settings.from_env()


def test_values_are_parsed_by_type() -> None:
    settings = Settings.from_env(
        {"PROFILEMESH_DEADLINE_MS": " 250 ", "PROFILEMESH_DURABILITY": "none", "PROFILEMESH_GATEWAY_LISTEN": ":9"}
    )
    assert (settings.deadline_ms, settings.durability, settings.gateway_listen) == (250, "none", ":9")


def test_an_empty_variable_keeps_the_default() -> None:
    assert Settings.from_env({"PROFILEMESH_PARTITIONS": "", "PROFILEMESH_DURABILITY": ""}) == Settings.from_env(
        {"PROFILEMESH_AGGREGATOR_CONSUMER": Settings().aggregator_consumer}
    )


def test_variables_of_other_programs_are_ignored() -> None:
    assert Settings.from_env({"PARTITIONS": "0", "PROFILEMESH_UNKNOWN": "x"}).partitions == 16


@pytest.mark.parametrize("name", INTEGER_SETTINGS)
def test_every_integer_setting_refuses_a_non_integer_naming_its_variable(name: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({variable(name): "12abc"})
    assert str(caught.value) == f"{variable(name)} must be an integer, got '12abc'"


@pytest.mark.parametrize("name", INTEGER_SETTINGS)
def test_every_integer_setting_refuses_a_negative_value(name: str) -> None:
    with pytest.raises(ConfigError, match=f"^{variable(name)} must be"):
        Settings.from_env({variable(name): "-1"})


@pytest.mark.parametrize(
    ("variable_name", "raw", "says"),
    [
        ("PROFILEMESH_PARTITIONS", "0", "PROFILEMESH_PARTITIONS must be 1..4096, got 0"),
        ("PROFILEMESH_PARTITIONS", "4097", "PROFILEMESH_PARTITIONS must be 1..4096, got 4097"),
        ("PROFILEMESH_AGGREGATOR_BATCH", "251", "PROFILEMESH_AGGREGATOR_BATCH must be 1..250, got 251"),
        ("PROFILEMESH_AGGREGATOR_BATCH", "0", "PROFILEMESH_AGGREGATOR_BATCH must be 1..250, got 0"),
        ("PROFILEMESH_MAX_STREAMS", "0", "PROFILEMESH_MAX_STREAMS must be at least 1, got 0"),
        ("PROFILEMESH_WATCH_INTERVAL_MS", "0", "PROFILEMESH_WATCH_INTERVAL_MS must be at least 1, got 0"),
        ("PROFILEMESH_DURABILITY", "all", "PROFILEMESH_DURABILITY must be one of none, local, replica, got 'all'"),
        ("PROFILEMESH_LOG_FORMAT", "xml", "PROFILEMESH_LOG_FORMAT must be one of json, text, got 'xml'"),
        ("PROFILEMESH_LOG_LEVEL", "LOUD", "PROFILEMESH_LOG_LEVEL must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL"),
    ],
)
def test_limits_and_choices(variable_name: str, raw: str, says: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({variable_name: raw})
    assert str(caught.value).startswith(says)


@pytest.mark.parametrize(("partitions", "ok"), [(1, True), (4096, True), (0, False), (4097, False)])
def test_the_partition_bounds_are_inclusive(partitions: int, ok: bool) -> None:
    if ok:
        assert Settings(partitions=partitions).partitions == partitions
    else:
        with pytest.raises(ConfigError):
            Settings(partitions=partitions)


def test_a_settings_built_in_code_is_checked_too() -> None:
    with pytest.raises(ConfigError, match="PROFILEMESH_DURABILITY must be one of"):
        Settings(durability="sometimes")
    with pytest.raises(ConfigError, match="PROFILEMESH_PARTITIONS must be an integer"):
        Settings(partitions="16")  # type: ignore[arg-type]  # the mistake under test
    with pytest.raises(ConfigError, match="PROFILEMESH_PARTITIONS must be an integer"):
        Settings(partitions=True)
    with pytest.raises(ConfigError, match="PROFILEMESH_REDIS_URL must be a string"):
        Settings(redis_url=None)  # type: ignore[arg-type]  # the mistake under test


def test_replace_is_checked() -> None:
    with pytest.raises(ConfigError, match="PROFILEMESH_STREAM_QUEUE"):
        dataclasses.replace(Settings(), stream_queue=0)


def test_a_secret_is_never_echoed() -> None:
    url = "rediss://app:hunter2@cache.internal:6379"
    settings = Settings(redis_url=url)
    assert "hunter2" not in repr(settings)
    with pytest.raises(ConfigError) as caught:
        Settings(redis_url=b"rediss://app:hunter2@x")  # type: ignore[arg-type]  # the mistake under test
    assert "hunter2" not in str(caught.value) and "PROFILEMESH_REDIS_URL" in str(caught.value)


def test_config_error_is_a_value_error_not_an_exit() -> None:
    assert issubclass(ConfigError, ValueError) and not issubclass(ConfigError, SystemExit)


@pytest.mark.parametrize("component", ["profile_svc", "reporting_svc", "aggregator_svc", "gateway"])
def test_metrics_listen_of_each_component(component: str) -> None:
    name = component.removesuffix("_svc")
    settings = Settings.from_env({f"PROFILEMESH_{name.upper()}_METRICS_LISTEN": "off"})
    assert settings.metrics_listen(component) == "off"


def test_the_configuration_page_table_is_the_declaration() -> None:
    """docs/configuration.md's table is `python -m common.runtime.config`'s output, row for row."""
    text = CONFIGURATION_PAGE.read_text()
    found = re.search(r"<!-- settings:[^\n]*-->\n(.*?)\n<!-- end of settings -->", text, re.S)
    assert found, "docs/configuration.md lost its settings markers"
    assert found.group(1) == markdown_table(), (
        "run `python -m common.runtime.config` and paste its table into docs/configuration.md"
    )


def test_every_setting_has_a_sentence_and_a_variable_of_its_name() -> None:
    rows = markdown_table().splitlines()[2:]
    assert len(rows) == len(dataclasses.fields(Settings))
    for spec, row in zip(dataclasses.fields(Settings), rows, strict=True):
        assert row.startswith(f"| `PROFILEMESH_{spec.name.upper()}` |")
        assert spec.metadata["doc"].strip()
