"""The container image is real: built with podman, every component run from it against a cluster, the seed's
walk-through through the containerized gateway, non-root with a read-only root file system, clean stops.

The cluster runs as local processes (localdev.cluster): no Valkey image can be pulled on these machines.
The components run as containers on the host network, configured only through PROFILEMESH_* variables.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from common.storage import acl
from localdev import image
from localdev.system import System, on_free_ports
from localdev.waiting import answers_ok
from tests.conftest import TEST_SETTINGS
from tests.helpers import wait_until
from tests.test_seed_walkthrough import walk_through

# No skip when podman is missing: `make test` installs it (make podman), and an image test that skips proves nothing.

COMPONENTS = {
    "profile": "profile_svc",
    "reporting": "reporting_svc",
    "aggregator": "aggregator_svc",
    "gateway": "gateway",
}
GRACE_S = int(TEST_SETTINGS["PROFILEMESH_SHUTDOWN_GRACE_S"])


def _container_options(system: System, module: str, secret: str | None) -> list[str]:
    """The PROFILEMESH_* settings the local system would give the component, as podman options; its cluster
    user's password from a podman secret into PROFILEMESH_REDIS_PASSWORD (never on a command line)."""
    settings = {name: value for name, value in system.env().items() if name.startswith("PROFILEMESH_")}
    secrets: list[str] = []
    if secret is not None:
        settings["PROFILEMESH_REDIS_USERNAME"] = acl.USERS[module]
        secrets = ["--secret", f"{secret},type=env,target=PROFILEMESH_REDIS_PASSWORD"]
    return [*secrets, *(option for name, value in sorted(settings.items()) for option in ("-e", f"{name}={value}"))]


def _create_secret(system: System, module: str, name: str) -> str:
    password_file = system.cluster.user_env(module)["PROFILEMESH_REDIS_PASSWORD_FILE"]
    image.podman("secret", "create", name, password_file)
    return name


def _all_running(started: dict[str, str]) -> bool:
    """True while every container runs; one that exited fails the test at once, with its last words."""
    for name in started.values():
        if image.podman("inspect", "--format", "{{.State.Running}}", name).stdout.strip() != "true":
            raise AssertionError(f"{name} exited: {image.podman('logs', name, check=False).stderr[-500:]}")
    return True


@pytest.fixture(scope="module")
def containers(built_image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[System, dict[str, str]]]:
    """The cluster as local processes, each component as a container from the image; all removed afterwards."""
    system = on_free_ports(tmp_path_factory.mktemp("image"), TEST_SETTINGS)
    system.cluster.start()
    system.migrate()  # the admin step the deployments run before the services (compose.yaml's functions)
    run_id = uuid.uuid4().hex[:8]
    started: dict[str, str] = {}
    secrets: dict[str, str] = {}
    launched = time.monotonic()
    try:
        for component, module in COMPONENTS.items():
            if module in acl.USERS:
                secrets[component] = _create_secret(system, module, f"profilemesh-test-{run_id}-{component}-password")
        for component in COMPONENTS:
            name = f"profilemesh-test-{run_id}-{component}"
            image.podman(
                "run",
                "--detach",
                "--name",
                name,
                "--network=host",
                "--read-only",
                *_container_options(system, COMPONENTS[component], secrets.get(component)),
                built_image,
                f"profilemesh-{component}",
            )
            started[component] = name
        wait_until(
            lambda: _all_running(started) and answers_ok(f"{system.gateway_url}/readyz"),
            timeout_s=60,
            what="the gateway's /readyz",
        )
        print(f"containers started to gateway ready: {time.monotonic() - launched:.1f} s")
        yield system, started
    finally:
        for name in started.values():
            logs = image.podman("logs", name, check=False)
            Path(system.cluster.data_dir.parent / f"{name}.log").write_text(logs.stdout + logs.stderr)
            image.podman("rm", "--force", "--time", "0", name, check=False)
        for secret in secrets.values():
            image.podman("secret", "rm", secret, check=False)
        system.cluster.stop()


def test_seed_walkthrough_through_the_containers(containers: tuple[System, dict[str, str]]) -> None:
    system, _ = containers
    walk_through(system.gateway_port)


def test_components_run_non_root_on_a_read_only_root(containers: tuple[System, dict[str, str]]) -> None:
    _, names = containers
    for component, name in names.items():
        assert image.podman("exec", name, "id", "-u").stdout.strip() != "0", component
        assert image.podman("inspect", "--format", "{{.HostConfig.ReadonlyRootfs}}", name).stdout.strip() == "true"
        # Not even the application's own files can be changed.
        refused = image.podman("exec", name, "touch", "/opt/profilemesh/changed", check=False)
        assert refused.returncode != 0 and "Read-only file system" in refused.stderr, (component, refused)
    # The final stage has no build tools: no compiler, no make, no pip.
    tools = "import shutil; print([t for t in ('gcc', 'cc', 'c++', 'make', 'pip', 'pip3') if shutil.which(t)])"
    assert image.podman("exec", names["gateway"], "python3", "-c", tools).stdout.strip() == "[]"


def test_the_image_healthcheck_answers_for_every_component(containers: tuple[System, dict[str, str]]) -> None:
    """The HEALTHCHECK (python3 -m common.runtime.probe, no extra binary) finds the component it runs beside."""
    _, names = containers
    for component, name in names.items():
        assert image.podman("healthcheck", "run", name, check=False).returncode == 0, component


def test_podman_stop_exits_each_component_cleanly_within_the_grace(containers: tuple[System, dict[str, str]]) -> None:
    """Last in this module: SIGTERM (the image's STOPSIGNAL), then a drain and exit 0 before podman would kill."""
    _, names = containers
    for component, name in names.items():
        started = time.monotonic()
        image.podman("stop", "--time", str(GRACE_S + 10), name)
        took = time.monotonic() - started
        state = image.podman("inspect", "--format", "{{.State.ExitCode}} {{.State.OOMKilled}}", name).stdout.split()
        assert state == ["0", "false"], (component, state)
        assert took < GRACE_S, (component, took)
