"""What the deployment artifacts say about each component, read into one shape, and the checks of it against the code.

Each artifact (compose.yaml, the ECS task definitions of deploy/aws, the Deployments of deploy/k8s) becomes a
`Wiring` per component: the environment it sets (and which values come from secrets), the ports it exposes,
its health check, its stop timeout. `problems()` compares them with what the code reads and serves.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from common.runtime.config import PREFIX, Settings

ROOT = Path(__file__).resolve().parent.parent
PRODUCT = ("common", "gateway", "profile_svc", "reporting_svc", "aggregator_svc")
COMPONENTS = ("profile", "reporting", "aggregator", "gateway")
SERVICES = ("profile", "reporting", "aggregator")
# The image's HEALTHCHECK; a deployment's own health check must run the same probe.
PROBE = ["python3", "-m", "common.runtime.probe"]
# What each component cannot run without in a deployment (the rest have sound defaults). Names of settings.
NEEDS = {
    **{
        service: {
            "redis_url",
            f"{service}_listen",
            f"{service}_metrics_listen",
            "partitions",
            "drain_ms",
            "shutdown_grace_s",
        }
        for service in SERVICES
    },
    "gateway": {"gateway_listen", "gateway_metrics_listen", "profile_target", "reporting_target", "shutdown_grace_s"},
}
# Where a deployment has cluster credentials (ECS, Kubernetes): the ACL user as a plain value, its password
# from a secret store, and no credentials in the URL.
USERNAME, PASSWORD, URL = "redis_username", "redis_password", "redis_url"


def variable(name: str) -> str:
    return PREFIX + name.upper()


def variables_the_code_reads() -> set[str]:
    """Every PROFILEMESH_ variable: the Settings fields, and any other the product code spells out."""
    names = {variable(spec.name) for spec in dataclasses.fields(Settings)}
    for package in PRODUCT:
        for source in (ROOT / package).rglob("*.py"):
            names |= set(re.findall(r"\bPROFILEMESH_[A-Z0-9_]*[A-Z0-9]\b", source.read_text()))
    return names


def gateway_paths() -> set[str]:
    """The paths the gateway serves, from its own router."""
    from gateway.app import build_app

    app = build_app(Settings())
    return {resource.canonical for resource in app.router.resources()}


@dataclass
class Wiring:
    component: str
    env: dict[str, str] = field(default_factory=dict)  # plain values
    secrets: set[str] = field(default_factory=set)  # variables injected from a secret store
    ports: set[int] = field(default_factory=set)
    health: str = ""  # "grpc:PORT", "http:PORT/PATH" or "probe" (the image's probe)
    stop_timeout_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


class _Loader(yaml.SafeLoader):
    """YAML with CloudFormation's short tags (!Ref, !Sub, ...) read as {"Tag": value}."""


def _tagged(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    if isinstance(node, yaml.ScalarNode):
        return {suffix: loader.construct_scalar(node)}
    if isinstance(node, yaml.SequenceNode):
        return {suffix: loader.construct_sequence(node, deep=True)}
    return {suffix: loader.construct_mapping(node, deep=True)}  # type: ignore[arg-type]  # a MappingNode here


_Loader.add_multi_constructor("!", _tagged)


def load_all(text: str) -> list[Any]:
    return [document for document in yaml.load_all(text, Loader=_Loader) if document]


def _duration_s(value: str) -> float:
    match = re.fullmatch(r"(\d+)(ms|s|m)", value)
    assert match, f"a duration, got {value!r}"
    return int(match.group(1)) * {"ms": 0.001, "s": 1, "m": 60}[match.group(2)]


def from_compose(text: str) -> dict[str, Wiring]:
    services = load_all(text)[0]["services"]
    wired = {}
    for component in COMPONENTS:
        spec = services[component]
        wiring = Wiring(component, env={k: str(v) for k, v in spec.get("environment", {}).items()})
        wiring.ports = {int(mapping.split(":")[-1]) for mapping in spec.get("ports", [])}
        wiring.health = "probe" if spec["healthcheck"]["test"] == ["CMD", *PROBE] else str(spec["healthcheck"]["test"])
        wiring.stop_timeout_s = _duration_s(spec["stop_grace_period"])
        wiring.extra["service_names"] = set(services)
        wired[component] = wiring
    return wired


def from_ecs(text: str) -> dict[str, Wiring]:
    resources = load_all(text)[0]["Resources"]
    wired = {}
    aliases: dict[str, int] = {}
    for resource in resources.values():
        if resource["Type"] == "AWS::ECS::Service":
            connect = resource["Properties"].get("ServiceConnectConfiguration", {})
            for service in connect.get("Services", []):
                aliases.update({alias["DnsName"]: alias["Port"] for alias in service["ClientAliases"]})
    for resource in resources.values():
        if resource["Type"] != "AWS::ECS::TaskDefinition":
            continue
        (container,) = resource["Properties"]["ContainerDefinitions"]
        component = container["Command"][0].removeprefix("profilemesh-")
        wiring = Wiring(component, env={e["Name"]: str(e["Value"]) for e in container.get("Environment", [])})
        wiring.secrets = {secret["Name"] for secret in container.get("Secrets", [])}
        if container["Command"] == MIGRATE_COMMAND or "PortMappings" not in container:  # a one-off: no port
            wired[MIGRATE if container["Command"] == MIGRATE_COMMAND else str(container["Command"])] = wiring
            continue
        wiring.ports = {mapping["ContainerPort"] for mapping in container["PortMappings"]}
        command = container["HealthCheck"]["Command"]
        wiring.health = "probe" if command == ["CMD", *PROBE] else str(command)
        wiring.stop_timeout_s = container["StopTimeout"]
        wiring.extra["service_names"] = set(aliases)
        wiring.extra["alias_ports"] = aliases
        wired[component] = wiring
    groups = [r["Properties"] for r in resources.values() if r["Type"] == "AWS::ElasticLoadBalancingV2::TargetGroup"]
    (group,) = groups
    attributes = {a["Key"]: a["Value"] for a in group.get("TargetGroupAttributes", [])}
    wired["gateway"].extra["balancer"] = {
        "port": group["Port"],
        "path": group["HealthCheckPath"],
        "deregistration_s": int(attributes.get("deregistration_delay.timeout_seconds", 300)),
    }
    return wired


def from_k8s(text: str) -> dict[str, Wiring]:
    documents = load_all(text)
    headless = {
        d["metadata"]["name"] for d in documents if d["kind"] == "Service" and d["spec"].get("clusterIP") == "None"
    }
    wired = {}
    for document in documents:
        if document["kind"] != "Deployment":
            continue
        pod = document["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        component = container["command"][0].removeprefix("profilemesh-")
        wiring = Wiring(component)
        _k8s_env(container, wiring)
        wiring.ports = {port["containerPort"] for port in container["ports"]}
        probes = [container["readinessProbe"], container["livenessProbe"]]
        shapes = {_k8s_probe(probe) for probe in probes}
        wiring.health = " ".join(sorted(shapes))
        wiring.stop_timeout_s = pod["terminationGracePeriodSeconds"]
        wiring.extra["service_names"] = headless
        wiring.extra["security"] = (pod.get("securityContext", {}), container.get("securityContext", {}))
        secrets = {v["name"]: v["secret"]["secretName"] for v in pod.get("volumes", []) if "secret" in v}
        wiring.extra["secret_mounts"] = {
            mount["mountPath"]: secrets[mount["name"]]
            for mount in container.get("volumeMounts", [])
            if mount["name"] in secrets
        }
        wiring.extra["labels"] = document["spec"]["template"]["metadata"]["labels"]
        wiring.extra["named_ports"] = {
            port["name"]: port["containerPort"] for port in container["ports"] if "name" in port
        }
        wired[component] = wiring
    for document in documents:
        if document["kind"] != "Job":
            continue
        pod = document["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        wiring = Wiring(MIGRATE if container.get("command") == MIGRATE_COMMAND else str(container.get("command")))
        _k8s_env(container, wiring)
        wiring.extra["labels"] = document["spec"]["template"]["metadata"]["labels"]
        wiring.extra["restart"] = pod.get("restartPolicy")
        wiring.extra["security"] = (pod.get("securityContext", {}), container.get("securityContext", {}))
        wired[wiring.component] = wiring
    wired_policies = [d for d in documents if d["kind"] == "NetworkPolicy"]
    for wiring in wired.values():
        wiring.extra["network_policies"] = wired_policies
    return wired


def _k8s_env(container: dict[str, Any], wiring: Wiring) -> None:
    """A container's environment into `wiring`: values, secrets by name, and what comes from elsewhere."""
    for entry in container.get("env", []):
        if "valueFrom" in entry:
            if "secretKeyRef" in entry["valueFrom"]:
                wiring.secrets.add(entry["name"])
            else:
                wiring.env[entry["name"]] = "<from elsewhere>"
        else:
            wiring.env[entry["name"]] = str(entry["value"])


def _k8s_probe(probe: dict[str, Any]) -> str:
    if "grpc" in probe:
        return f"grpc:{probe['grpc']['port']}"
    if "exec" in probe:
        return "probe" if probe["exec"]["command"] == PROBE else str(probe["exec"]["command"])
    return f"http:{probe['httpGet']['port']}{probe['httpGet']['path']}"


# The one-off admin step that loads the function libraries (docs/functions.md): compose's cluster-migrate, the
# ECS MigrateTask, the Kubernetes Job. Read as the Wiring of MIGRATE.
MIGRATE = "migrate"
MIGRATE_COMMAND = ["profilemesh", "cluster", "migrate"]


def migration_problems(wired: dict[str, Wiring], user: str | None = None) -> list[str]:
    """The one-off migrate step is there, runs `profilemesh cluster migrate` against the services' cluster as its own
    user (`user`, when the artifact names it plainly) with a password from a secret store."""
    if MIGRATE not in wired:
        return ["no one-off runs `profilemesh cluster migrate`: the services would refuse to start"]
    found = []
    wiring = wired[MIGRATE]
    url = wiring.env.get(variable(URL))
    if url is None:
        found.append(f"migrate: {variable(URL)} is not set")
    elif any(url != wired[service].env.get(variable(URL)) for service in SERVICES):
        found.append(f"migrate: {variable(URL)} is not the services' cluster")
    if variable(PASSWORD) not in wiring.secrets:
        found.append(f"migrate: {variable(PASSWORD)} does not come from a secret")
    if user is not None and wiring.env.get(variable(USERNAME)) != user:
        found.append(f"migrate: logs in as {wiring.env.get(variable(USERNAME))!r}, not {user!r}")
    if wiring.extra.get("restart", "OnFailure") not in ("OnFailure", "Never"):
        found.append(f"migrate: a Job's pod restarts {wiring.extra['restart']!r}")
    return found


def compose_migration_problems(text: str) -> list[str]:
    """compose.yaml's one-shot cluster-migrate runs after cluster-create, and every service waits for its success."""
    services = load_all(text)[0]["services"]
    spec = services.get("cluster-migrate")
    if spec is None or spec.get("command") != MIGRATE_COMMAND:
        return ["no one-off runs `profilemesh cluster migrate`: the services would refuse to start"]
    found = []
    if spec.get("restart") != "on-failure":
        found.append("cluster-migrate: does not run again on a failure (restart: on-failure)")
    if spec.get("depends_on", {}).get("cluster-create") != {"condition": "service_completed_successfully"}:
        found.append("cluster-migrate: does not wait for cluster-create")
    url = spec.get("environment", {}).get(variable(URL))
    for service in SERVICES:
        if services[service].get("environment", {}).get(variable(URL)) != url:
            found.append(f"cluster-migrate: {variable(URL)} is not {service}'s cluster")
        if services[service].get("depends_on", {}).get("cluster-migrate") != {
            "condition": "service_completed_successfully"
        }:
            found.append(f"{service}: does not wait for cluster-migrate to succeed")
    return found


def _port(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def problems(wired: dict[str, Wiring]) -> list[str]:
    """Everything in `wired` that disagrees with the code; empty when the artifact is sound."""
    found: list[str] = []
    known = variables_the_code_reads()
    defaults = Settings()
    paths = gateway_paths()
    for component in COMPONENTS:
        if component not in wired:
            found.append(f"{component}: not deployed")
            continue
        wiring = wired[component]
        given = set(wiring.env) | wiring.secrets
        for name in sorted(given - known):
            found.append(f"{component}: {name} is read by no code")
        for need in sorted(NEEDS[component]):
            name = variable(need)
            if name not in known:
                found.append(f"{component}: the code no longer reads {name}; update NEEDS")
            elif name not in given:
                found.append(f"{component}: {name} is not set")
        if component == "gateway":
            for name in sorted(n for n in given if n.startswith(variable("redis"))):
                found.append(f"gateway: {name} is set, but the gateway has no cluster access")

        def setting(name: str, wiring: Wiring = wiring) -> str:
            """The value the component gets: the artifact's, else the code's default."""
            return wiring.env.get(variable(name), str(getattr(defaults, name)))

        listen = _port(setting(f"{component}_listen"))
        metrics = _port(setting(f"{component}_metrics_listen"))
        if wiring.ports and listen not in wiring.ports:
            found.append(f"{component}: exposes {sorted(wiring.ports)} but listens on {listen}")
        for port in sorted(wiring.ports - {listen, metrics}):
            found.append(f"{component}: exposes port {port}, on which nothing listens")
        if component == "gateway":
            expected_health = {"probe", f"http:{listen}/healthz http:{listen}/readyz"}
            for target in ("profile", "reporting"):
                address = setting(f"{target}_target").removeprefix("dns:///")
                host, port = address.rsplit(":", 1)
                target_listen = _port(
                    wired[target].env.get(variable(f"{target}_listen"), str(getattr(defaults, f"{target}_listen")))
                )
                if int(port) != target_listen:
                    found.append(
                        f"gateway: {variable(f'{target}_target')} port {port}, but {target} listens on {target_listen}"
                    )
                if host not in wiring.extra.get("service_names", {host}):
                    found.append(f"gateway: {variable(f'{target}_target')} names {host!r}, which no service answers to")
            balancer = wiring.extra.get("balancer")
            if balancer:
                if balancer["path"] not in paths or balancer["path"] != "/readyz":
                    found.append(f"gateway: the load balancer checks {balancer['path']}, not the gateway's /readyz")
                if balancer["port"] != listen:
                    found.append(
                        f"gateway: the load balancer sends to {balancer['port']}, the gateway listens on {listen}"
                    )
                if balancer["deregistration_s"] < int(setting("shutdown_grace_s")):
                    found.append("gateway: the deregistration delay is shorter than PROFILEMESH_SHUTDOWN_GRACE_S")
        else:
            expected_health = {"probe", f"grpc:{listen}"}
        if wiring.health not in expected_health:
            found.append(f"{component}: health check {wiring.health!r}, expected one of {sorted(expected_health)}")
        for path in re.findall(
            r"/[a-z]+", wiring.health if component == "gateway" and wiring.health != "probe" else ""
        ):
            if path not in paths:
                found.append(f"gateway: probes {path}, which it does not serve")
        drain_s = int(setting("drain_ms")) / 1000 if component != "gateway" else 0
        needed = drain_s + int(setting("shutdown_grace_s"))
        if wiring.stop_timeout_s <= needed:
            found.append(
                f"{component}: stops after {wiring.stop_timeout_s} s, within the drain ({drain_s} s) and grace "
                f"({setting('shutdown_grace_s')} s) it needs"
            )
    return found


def secret_problems(wired: dict[str, Wiring]) -> list[str]:
    """Each service logs in as its ACL user with a password from a secret store, never a plain value (ECS and
    Kubernetes); its cluster URL carries no credentials."""
    found = []
    for component in SERVICES:
        wiring = wired[component]
        if variable(PASSWORD) in wiring.env:
            found.append(f"{component}: {variable(PASSWORD)} is a plain value, not a secret")
        elif variable(PASSWORD) not in wiring.secrets:
            found.append(f"{component}: {variable(PASSWORD)} does not come from a secret")
        if variable(USERNAME) not in wiring.env and variable(USERNAME) not in wiring.secrets:
            found.append(f"{component}: {variable(USERNAME)} is not set")
        if "@" in wiring.env.get(variable(URL), ""):
            found.append(f"{component}: {variable(URL)} carries credentials; give {variable(USERNAME)} and a secret")
    return found


# Mesh security where the deployment has no other (Kubernetes): mutual TLS and the allow-list on every gRPC
# server, and NetworkPolicies. The gRPC port each service listens on, and the cluster's port.
GRPC_PORTS = {"profile": 50051, "reporting": 50052, "aggregator": 50053}
CLUSTER_PORT = 6379
OUTSIDE = "outside"  # anything that is not one of the components' pods: other pods, other namespaces, the internet
GRPC_FILES = ("grpc_cert_file", "grpc_key_file", "grpc_ca_file")


def _rpc_methods(component: str) -> list[str]:
    """The full method names a service serves, from its descriptors."""
    from profilemesh.profile.v1 import profile_pb2
    from profilemesh.reporting.v1 import reporting_pb2

    module = {"profile": profile_pb2, "reporting": reporting_pb2}.get(component)
    if module is None:
        return []
    return [f"/{s.full_name}/{m.name}" for s in module.DESCRIPTOR.services_by_name.values() for m in s.methods]


def mtls_problems(wired: dict[str, Wiring]) -> list[str]:
    """Every component serves and calls gRPC over mutual TLS with files from a mounted Secret; every service
    checks each method's client: its RPCs only the gateway, health any certificate of the mesh, nothing else."""
    from common.rpc.tls import ANY_CLIENT, AllowedClients, parse_allowed_clients

    found = []
    for component in COMPONENTS:
        wiring = wired[component]
        for name in GRPC_FILES:
            path = wiring.env.get(variable(name))
            if not path:
                found.append(f"{component}: {variable(name)} is not set: gRPC without mutual TLS")
            elif not any(path.startswith(mount.rstrip("/") + "/") for mount in wiring.extra.get("secret_mounts", {})):
                found.append(f"{component}: {variable(name)} ({path}) is not in a mounted Secret")
        if component == "gateway":
            continue
        try:
            rules = parse_allowed_clients(wiring.env.get(variable("grpc_allowed_clients"), ""))
        except ValueError as error:
            found.append(f"{component}: {error}")
            continue
        if not rules:
            found.append(
                f"{component}: {variable('grpc_allowed_clients')} is not set: any certificate may call anything"
            )
            continue
        allowed = AllowedClients(rules).allowed
        for method in _rpc_methods(component):
            if allowed(method) != {"gateway"}:
                found.append(f"{component}: {method} is allowed to {sorted(allowed(method))}, not to the gateway alone")
        if ANY_CLIENT not in allowed("/grpc.health.v1.Health/Check"):
            found.append(f"{component}: health checks are not open to the mesh (the exec probe can't check)")
        for prefix, identities in rules.items():
            if ANY_CLIENT in identities and not prefix.startswith("/grpc.health.v1.Health/"):
                found.append(f"{component}: {prefix} is open to any certificate")
    return found


def _selects(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    """Whether a label selector (matchLabels, matchExpressions) selects `labels`; an empty one selects all."""
    selector = selector or {}
    if any(labels.get(key) != value for key, value in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": labels.get(key) not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[operator]
        if not ok:
            return False
    return True


def _peers(rule_peers: list[dict[str, Any]] | None, wired: dict[str, Wiring], direction: str) -> set[str]:
    """The components (and OUTSIDE, and `cluster:CIDR` for egress ipBlocks) a rule's from/to admits."""
    if not rule_peers:
        return {*COMPONENTS, OUTSIDE}
    admitted: set[str] = set()
    for peer in rule_peers:
        if "ipBlock" in peer:
            admitted.add(OUTSIDE if direction == "ingress" else f"cluster:{peer['ipBlock']['cidr']}")
        elif "namespaceSelector" in peer:
            admitted.add(OUTSIDE)  # other namespaces (this one only if it matches: not assumed)
        elif "podSelector" in peer:
            admitted |= {c for c in wired if _selects(peer["podSelector"], wired[c].extra.get("labels", {}))}
    return admitted


def _ports_admit(ports: list[dict[str, Any]] | None, port: int, wiring: Wiring) -> bool:
    if not ports:
        return True
    for entry in ports:
        number = entry.get("port")
        if isinstance(number, str):
            number = wiring.extra.get("named_ports", {}).get(number)
        if number is None or number == port or (entry.get("endPort") and number <= port <= entry["endPort"]):
            return True
    return False


def _allowed(wired: dict[str, Wiring], pod: str, direction: str, port: int, port_owner: str) -> set[str] | None:
    """Who may reach `pod` on `port` (ingress), or where `pod` may send to `port` (egress); None: unrestricted."""
    policies = [
        policy
        for policy in wired[pod].extra.get("network_policies", [])
        if _selects(policy["spec"].get("podSelector"), wired[pod].extra.get("labels", {}))
        and direction.capitalize() in policy["spec"].get("policyTypes", ["Ingress"])
    ]
    if not policies:
        return None
    admitted: set[str] = set()
    for policy in policies:
        for rule in policy["spec"].get(direction, []):
            if _ports_admit(rule.get("ports"), port, wired[port_owner]):
                admitted |= _peers(rule.get("from" if direction == "ingress" else "to"), wired, direction)
    return admitted


def network_problems(wired: dict[str, Wiring]) -> list[str]:
    """The NetworkPolicies: everything denied by default; only the gateway reaches the services' gRPC ports
    (and it does reach profile's and reporting's); only the services reach the cluster."""
    found = []
    policies = wired["gateway"].extra.get("network_policies", [])
    if not any(
        p["spec"].get("podSelector") in ({}, None)
        and set(p["spec"].get("policyTypes", [])) == {"Ingress", "Egress"}
        and not p["spec"].get("ingress")
        and not p["spec"].get("egress")
        for p in policies
    ):
        found.append("no default-deny NetworkPolicy (every pod, ingress and egress)")
    for service, port in GRPC_PORTS.items():
        ingress = _allowed(wired, service, "ingress", port, service)
        reach = set()
        for source in [*COMPONENTS, *([MIGRATE] if MIGRATE in wired else []), OUTSIDE]:
            if ingress is not None and source not in ingress:
                continue
            if source == OUTSIDE:
                reach.add(source)
                continue
            egress = _allowed(wired, source, "egress", port, service)
            if egress is None or service in egress:
                reach.add(source)
        reach.discard(service)  # a pod's own probe runs inside it
        if reach - {"gateway"}:
            found.append(f"{service}: its gRPC port {port} is reachable from {sorted(reach - {'gateway'})}")
        if service != "aggregator" and "gateway" not in reach:
            found.append(f"{service}: the gateway can't reach its gRPC port {port}")
    reaching = set()
    for component in [*COMPONENTS, *([MIGRATE] if MIGRATE in wired else [])]:
        egress = _allowed(wired, component, "egress", CLUSTER_PORT, component)
        if egress is None or any(peer.startswith("cluster:") or peer == OUTSIDE for peer in egress):
            reaching.add(component)
    if reaching - {*SERVICES, MIGRATE}:
        found.append(
            f"the cluster's port {CLUSTER_PORT} is reachable from {sorted(reaching)}, not the services (and the "
            "migrate Job) alone"
        )
    for component in sorted({*SERVICES, *([MIGRATE] if MIGRATE in wired else [])} - reaching):
        found.append(f"{component} can't reach the cluster's port {CLUSTER_PORT}")
    return found
