"""compose.yaml works: podman-compose starts the Valkey cluster and every component from the image, in an order
that proves none of them needs another to be up first, the seed's walk-through passes through its gateway, and
`podman-compose down` leaves nothing of the project behind.

On the host's loopback (compose.host.yaml, every port a free one from a variable), as everything here runs, with
the Valkey image built locally (deploy/valkey/Dockerfile) since valkey/valkey can't be pulled. podman 4.3
(Debian 12) ignores the health conditions and can't start a chain of `depends_on` (its dependency graph misses
the dependencies' own), so we run `up --no-deps`, as docs/deploying.md says for it: the order is then the
components' own business, which is what this test checks.
"""

from __future__ import annotations

import functools
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from localdev import image
from localdev.ports import free_ports
from localdev.waiting import answers_ok
from tests.helpers import http_call, wait_until
from tests.test_seed_walkthrough import walk_through

ROOT = Path(__file__).resolve().parent.parent
PODMAN_COMPOSE = ROOT / ".venv-deploy" / "bin" / "podman-compose"
FILES = ["-f", str(ROOT / "compose.yaml"), "-f", str(ROOT / "compose.host.yaml")]
COMPONENTS = ["profile", "reporting", "aggregator", "gateway"]
NODES = [f"valkey-{n}" for n in range(1, 7)]
# Cluster bus ports too: Valkey's default (its port + 10000) may fall in the ephemeral range, taken by chance.
PORTS = [
    *(f"VALKEY_PORT_{n}" for n in range(1, 7)),
    *(f"VALKEY_BUS_PORT_{n}" for n in range(1, 7)),
    *(f"{component.upper()}_PORT" for component in COMPONENTS),
    *(f"{component.upper()}_METRICS_PORT" for component in COMPONENTS),
]


class Compose:
    """One podman-compose project on free loopback ports."""

    def __init__(self, project: str) -> None:
        ports = dict(zip(PORTS, free_ports(len(PORTS)), strict=True))
        self.ports = ports
        self.project = project
        self.env = {
            **image.podman_env(),
            "PROFILEMESH_IMAGE": image.IMAGE,
            "VALKEY_IMAGE": image.VALKEY_IMAGE,
            **{name: str(port) for name, port in ports.items()},
        }

    def __call__(self, *arguments: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [str(PODMAN_COMPOSE), "-p", self.project, *FILES, *arguments],
            env=self.env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=180,
        )
        if check and done.returncode != 0:
            tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
            raise AssertionError(f"podman-compose {' '.join(arguments)} failed ({done.returncode}):\n{tail}")
        return done

    def container(self, service: str) -> str:
        return f"{self.project}_{service}_1"

    def leftovers(self) -> list[str]:
        """Every container and pod of the project that podman still has."""
        label = f"label=io.podman.compose.project={self.project}"
        containers = image.podman("ps", "--all", "--filter", label, "--format", "{{.Names}}").stdout.split()
        pods = image.podman("pod", "ls", "--filter", f"name=pod_{self.project}", "--format", "{{.Name}}").stdout
        return containers + pods.split()

    def running(self, service: str) -> bool:
        state = image.podman("inspect", "--format", "{{.State.Running}}", self.container(service), check=False)
        return state.stdout.strip() == "true"

    def healthy(self, service: str) -> bool:
        """compose's own health check of the service, run now (podman runs none on its own without systemd)."""
        return image.podman("healthcheck", "run", self.container(service), check=False).returncode == 0


def _health(port: int) -> str:
    """A service's gRPC health, asked directly."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
        except grpc.RpcError as error:
            return str(error.code().name)
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


def _waiting_for_the_cluster(compose: Compose) -> bool:
    """Every component runs: the services answer NOT_SERVING, the gateway's /readyz 503."""
    for component in COMPONENTS:
        if not compose.running(component):
            logs = image.podman("logs", compose.container(component), check=False)
            raise AssertionError(f"{component} exited without a cluster: {(logs.stdout + logs.stderr)[-500:]}")
    services = [compose.ports[f"{component.upper()}_PORT"] for component in COMPONENTS if component != "gateway"]
    if any(_health(port) != "NOT_SERVING" for port in services):
        return False
    try:
        return http_call(compose.ports["GATEWAY_PORT"], "GET", "/readyz")[0] == 503
    except OSError:
        return False


def _cluster_created(compose: Compose) -> bool:
    """The one-shot cluster-create has run to success (on a failure it runs again: restart on-failure)."""
    state = image.podman(
        "inspect", "--format", "{{.State.Status}} {{.State.ExitCode}}", compose.container("cluster-create")
    )
    return state.stdout.split() == ["exited", "0"]


@pytest.fixture(scope="module")
def compose(built_image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Compose]:
    """The compose system, started components first and the cluster last; `down` afterwards whatever happened."""
    image.build_valkey()
    running = Compose(f"profilemesh-compose-{uuid.uuid4().hex[:8]}")
    started = time.monotonic()
    try:
        running("up", "-d", "--no-deps", *COMPONENTS)
        wait_until(lambda: _waiting_for_the_cluster(running), timeout_s=60, what="the components to wait")
        waiting = time.monotonic() - started
        cluster_started = time.monotonic()
        running("up", "-d", "--no-deps")
        wait_until(lambda: _cluster_created(running), timeout_s=90, what="cluster-create to succeed")
        wait_until(
            lambda: answers_ok(f"http://127.0.0.1:{running.ports['GATEWAY_PORT']}/readyz"),
            timeout_s=60,
            what="the gateway's /readyz",
        )
        ready = time.monotonic()
        # Then compose's own health check of every container, each once it passes (a healthy one stays so).
        for service in [*NODES, *COMPONENTS]:
            wait_until(functools.partial(running.healthy, service), timeout_s=30, what=f"{service}'s health check")
        print(
            f"compose: components up and waiting in {waiting:.1f} s; cluster started to the gateway ready in "
            f"{ready - cluster_started:.1f} s; every health check passed {time.monotonic() - ready:.1f} s later"
        )
        yield running
    finally:
        logs_dir = tmp_path_factory.mktemp("compose")
        for service in [*NODES, "cluster-create", *COMPONENTS]:
            logs = image.podman("logs", running.container(service), check=False)
            (logs_dir / f"{service}.log").write_text(logs.stdout + logs.stderr)
        if running.leftovers():
            running("down", check=False)


def test_seed_walkthrough_through_compose(compose: Compose) -> None:
    walk_through(compose.ports["GATEWAY_PORT"])


def test_down_removes_everything_it_started(compose: Compose) -> None:
    """Last: `down` stops and removes every container of the project (found by its label) and its pod."""
    assert len(compose.leftovers()) == len(NODES) + 1 + len(COMPONENTS) + 1  # and the pod
    compose("down")
    assert compose.leftovers() == []
