"""`make bench` in miniature, so the benchmark harness can't rot: every scenario runs and nothing fails.

Figures are never asserted here (the machine is shared); only that the report is complete and
that every request and every read-back succeeded.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench.report import (
    DRAIN_HEADER,
    GENERATOR_COLUMN,
    GROWTH_HEADER,
    IDLE_COLUMN,
    LAG_HEADER,
    LOAD_HEADER,
    RATIO_HEADER,
    SINGLE_HEADER,
    SYSTEM_TOTAL,
    expected_load_rows,
)
from bench.sizes import SMOKE

ROOT = Path(__file__).resolve().parent.parent


def loads_at(concurrency: int) -> list[tuple[str, str, int]]:
    return [row for row in expected_load_rows(SMOKE.concurrencies) if row[2] == concurrency]


def _rows(text: str, header: tuple[str, ...], after: str = "") -> list[dict[str, str]]:
    """The rows of the Markdown table whose header is `header` (the first after the line `after`), as dicts."""
    lines = text.splitlines()
    head = "| " + " | ".join(header) + " |"
    start = lines.index(head, lines.index(after) if after else 0) + 2
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append(dict(zip(header, (cell.strip() for cell in line.strip("|").split("|")), strict=True)))
    return rows


@pytest.mark.timeout(240)
def test_bench_smoke_writes_every_scenario_without_errors(tmp_path: Path) -> None:
    assert shutil.which("wrk"), "wrk is not installed: `make test` installs it (Debian package wrk)"
    out = tmp_path / "results.md"
    run = subprocess.run(
        [sys.executable, "-m", "bench.run", "--smoke", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=220,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    text = out.read_text()

    loads = _rows(text, LOAD_HEADER)
    found = {(row["scenario"], row["system"], int(row["c"])) for row in loads}
    assert found == set(expected_load_rows(SMOKE.concurrencies))
    for row in loads:
        assert row["errors"] == "0", row
        assert int(row["req/s"].replace(",", "")) > 0, row

    for concurrency in SMOKE.concurrencies:
        title = next(line for line in text.splitlines() if line.startswith(f"### CPU per request at c={concurrency} "))
        header = next(line for line in text.splitlines()[text.splitlines().index(title) :] if line.startswith("| "))
        columns = tuple(cell.strip() for cell in header.strip("|").split("|"))
        assert {"gateway", "profile_svc", "aggregator_svc", "cluster (6 nodes)", "baseline"} <= set(columns), columns
        assert columns[-3:] == (SYSTEM_TOTAL, GENERATOR_COLUMN, IDLE_COLUMN), columns
        cpu = _rows(text, columns, after=title)
        assert {(row["scenario"], row["system"]) for row in cpu} == {(s, system) for s, system, c in loads_at(1)}
        for row in cpu:
            assert int(row[SYSTEM_TOTAL].replace(",", "")) > 0, row
            own = [int(row[name].replace(",", "")) for name in columns[2:-3] if row[name] != "–"]
            assert row["cluster (6 nodes)"] != "–", row  # the cluster counts for both systems
            assert int(row[SYSTEM_TOTAL].replace(",", "")) == pytest.approx(sum(own), abs=len(columns)), row
            # the system's processes, rounded, add up to its total; the generator and the idle system are apart

    ratios = _rows(text, RATIO_HEADER)
    assert len(ratios) == 8, ratios  # one per target line of bench/report.py
    assert all(row["median of rounds"].endswith("x") and row["verdict"] in ("met", "**not met**") for row in ratios)
    assert any(line.startswith("c=1 latency, REST reads") for line in text.splitlines())
    assert [row["target"].split()[0] for row in _rows(text, SINGLE_HEADER)] == ["aggregator", "lag", "every"]

    drains = _rows(text, DRAIN_HEADER)
    assert [row["replicas"] for row in drains] == ["1", "1", "2"]
    assert all(row["finished"] == "yes" for row in drains), drains

    growth = _rows(text, GROWTH_HEADER)
    assert [row["profiles"] for row in growth] == [f"{n:,}" for n in SMOKE.growth_sizes]
    assert all(row["errors"] == "0" for row in growth), growth

    lag = _rows(text, LAG_HEADER)
    assert len(lag) == 1 and lag[0]["background errors"] == "0", lag

    for section in ("## Targets", "### Read-to-visible lag", "### Stream length", "## Memory of the processes"):
        assert section in text
