"""`pip install .` into a fresh virtual environment gives every component's console script, with the gRPC
code generated from protos/ inside the wheel (setup.py's build hook), and the pins of requirements.txt."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from localdev import image
from localdev.ports import free_ports
from localdev.waiting import answers_ok
from tests.helpers import wait_until

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = {
    "profilemesh-profile": "ProfileService",
    "profilemesh-reporting": "ReportingService",
    "profilemesh-aggregator": "aggregator",
    "profilemesh-gateway": "REST gateway",
}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """profilemesh's wheel, built offline from the host-built wheels of its build requirements."""
    wheels = image.ensure_wheels()
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-index",
            "--find-links",
            str(wheels),
            "-w",
            str(out),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    return next(out.glob("profilemesh-*.whl"))


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment with only the wheel and its dependencies installed; returns its bin/."""
    directory = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", str(directory)], check=True)
    subprocess.run(
        [
            str(directory / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-index",
            "--find-links",
            str(image.CACHE / "wheels"),
            str(wheel),
        ],
        check=True,
        capture_output=True,
    )
    return directory / "bin"


def test_the_wheel_holds_the_generated_code_and_the_data_files(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for proto in ROOT.joinpath("protos").rglob("*.proto"):
        stem = str(proto.relative_to(ROOT / "protos")).removesuffix(".proto")
        assert {f"{stem}_pb2.py", f"{stem}_pb2_grpc.py", f"{stem}_pb2.pyi"} <= names, stem
    for script in ROOT.glob("*/scripts/*.lua"):
        assert str(script.relative_to(ROOT)) in names
    assert "gateway/static/dashboard.html" in names
    # The hand-written client beside the generated code, in the one namespace package (no __init__ at its top).
    assert {"profilemesh/client/__init__.py", "profilemesh/client/aio.py"} <= names
    assert "profilemesh/__init__.py" not in names
    assert not any(name.startswith(("tests/", "bench/", "localdev/")) for name in names)


def test_dependencies_are_the_pins_of_requirements_txt() -> None:
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pinned = [line.strip() for line in (ROOT / "requirements.txt").read_text().splitlines()]
    assert sorted(declared) == sorted(line for line in pinned if line and not line.startswith("#"))
    assert all(re.fullmatch(r"[A-Za-z0-9_.-]+==[0-9][^ ]*", requirement) for requirement in declared)


def test_every_console_script_answers_help_from_the_fresh_venv(venv: Path, tmp_path: Path) -> None:
    """Run outside the repository, so nothing can come from the source tree."""
    for script, component in SCRIPTS.items():
        done = subprocess.run([venv / script, "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=30)
        assert done.returncode == 0 and f"usage: {script}" in done.stdout and component in done.stdout, done
        refused = subprocess.run([venv / script, "--port", "1"], cwd=tmp_path, capture_output=True, text=True)
        assert refused.returncode != 0 and "unexpected arguments '--port 1'" in refused.stderr, refused
    done = subprocess.run([venv / "profilemesh", "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0 and "usage: profilemesh" in done.stdout, done
    where = subprocess.run(
        [
            venv / "python",
            "-c",
            "import common, profilemesh.profile.v1.profile_pb2 as m, profilemesh.client as c; "
            "print(common.__file__, m.__file__, c.__file__, c.ProfileClient.__name__)",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert where[-1] == "ProfileClient"
    assert all(path.startswith(str(venv.parent)) for path in where[:-1]), where


def test_the_installed_gateway_serves_and_stops_on_sigterm(venv: Path, tmp_path: Path) -> None:
    port, metrics = free_ports(2)
    env = {
        "PROFILEMESH_GATEWAY_LISTEN": f"127.0.0.1:{port}",
        "PROFILEMESH_GATEWAY_METRICS_LISTEN": f"127.0.0.1:{metrics}",
    }
    gateway = subprocess.Popen([venv / "profilemesh-gateway"], cwd=tmp_path, env=env)
    try:
        wait_until(lambda: answers_ok(f"http://127.0.0.1:{port}/healthz"), timeout_s=30, what="the gateway's /healthz")
        assert answers_ok(f"http://127.0.0.1:{metrics}/metrics")
        gateway.send_signal(signal.SIGTERM)
        assert gateway.wait(timeout=15) == 0
    finally:
        if gateway.poll() is None:
            gateway.kill()
            gateway.wait()
