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

from bench.report import DRAIN_HEADER, GROWTH_HEADER, LAG_HEADER, LOAD_HEADER, expected_load_rows
from bench.scale import SMOKE

ROOT = Path(__file__).resolve().parent.parent


def _rows(text: str, header: tuple[str, ...]) -> list[dict[str, str]]:
    """The rows of the Markdown table whose header is `header`, as dicts."""
    lines = text.splitlines()
    head = "| " + " | ".join(header) + " |"
    start = lines.index(head) + 2
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
