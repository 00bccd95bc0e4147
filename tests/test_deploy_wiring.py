"""Drift between the code and the deployment artifacts is caught: environment variables, ports, health checks and
drain timings of compose.yaml, the ECS task definitions and the Kubernetes Deployments agree with what the code
reads and serves; a deliberately broken copy of each artifact is refused. Also the artifacts' own linters."""

from __future__ import annotations

import json
import subprocess
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from common.storage import acl
from common.storage.acl import rules
from tests.wiring import (
    MIGRATE,
    ROOT,
    Wiring,
    compose_migration_problems,
    from_compose,
    from_ecs,
    from_k8s,
    load_all,
    migration_problems,
    mtls_problems,
    network_problems,
    problems,
    secret_problems,
)

COMPOSE = ROOT / "compose.yaml"
ECS = ROOT / "deploy" / "aws" / "profilemesh.yaml"
K8S = ROOT / "deploy" / "k8s" / "profilemesh.yaml"
NETWORK_POLICIES = ROOT / "deploy" / "k8s" / "network-policies.yaml"
CERT_MANAGER = ROOT / "deploy" / "k8s" / "cert-manager.example.yaml"
TOOLS = ROOT / ".venv-deploy" / "bin"
ARTIFACTS: dict[str, tuple[Path, Callable[[str], dict[str, Wiring]]]] = {
    "compose": (COMPOSE, from_compose),
    "ecs": (ECS, from_ecs),
    "k8s": (K8S, from_k8s),
}


@pytest.mark.parametrize("artifact", ARTIFACTS)
def test_artifact_agrees_with_the_code(artifact: str) -> None:
    path, read = ARTIFACTS[artifact]
    assert problems(read(path.read_text())) == []


@pytest.mark.parametrize("artifact", ["ecs", "k8s"])
def test_cluster_credentials_are_a_user_and_a_secret_password(artifact: str) -> None:
    path, read = ARTIFACTS[artifact]
    wired = read(path.read_text())
    assert secret_problems(wired) == []
    for service in ("profile", "reporting", "aggregator"):
        assert "PROFILEMESH_REDIS_PASSWORD" in wired[service].secrets, service
        assert "PROFILEMESH_REDIS_USERNAME" in wired[service].env, service
        assert "PROFILEMESH_REDIS_URL" not in wired[service].secrets, service


def test_k8s_users_are_the_acl_users_of_common_acl() -> None:
    """The local cluster's ACL users (common/storage/acl.py) are the ones the Deployments log in as."""
    wired = from_k8s(K8S.read_text())
    for service, module in (
        ("profile", "profile_svc"),
        ("reporting", "reporting_svc"),
        ("aggregator", "aggregator_svc"),
    ):
        assert wired[service].env["PROFILEMESH_REDIS_USERNAME"] == acl.USERS[module]


# One deliberate break per kind of drift, in a copy of each artifact: (artifact, original, broken, what is reported).
BREAKS = [
    (
        "compose",
        "PROFILEMESH_PROFILE_TARGET: dns:///profile:50051",
        "PROFILEMESH_PROFILE_TARGET: dns:///profile:50061",
        "gateway: PROFILEMESH_PROFILE_TARGET port 50061, but profile listens on 50051",
    ),
    ("compose", "stop_grace_period: 15s", "stop_grace_period: 5s", "stops after 5 s"),
    (
        "compose",
        "PROFILEMESH_GATEWAY_LISTEN: 0.0.0.0:8080",
        "PROFILEMESH_GATEWAY_LISTEN: 0.0.0.0:8081",
        "gateway: exposes [8080] but listens on 8081",
    ),
    ("compose", "PROFILEMESH_PARTITIONS:", "PROFILEMESH_PARTITION:", "PROFILEMESH_PARTITION is read by no code"),
    ("ecs", "HealthCheckPath: /readyz", "HealthCheckPath: /ready", "the load balancer checks /ready"),
    ("ecs", "StopTimeout: 15", "StopTimeout: 10", "stops after 10 s"),
    (
        "ecs",
        'deregistration_delay.timeout_seconds, Value: "10"',
        'deregistration_delay.timeout_seconds, Value: "5"',
        "the deregistration delay is shorter",
    ),
    (
        "ecs",
        '{Name: PROFILEMESH_REPORTING_LISTEN, Value: "0.0.0.0:50052"}',
        '{Name: PROFILEMESH_REPORTING_LISTEN, Value: "0.0.0.0:50054"}',
        "reporting: exposes",
    ),
    (
        "ecs",
        '{Name: PROFILEMESH_REDIS_URL, Value: !Sub "rediss://${Cluster.ClusterEndpoint.Address}:6379"}\n'
        "            - {Name: PROFILEMESH_REDIS_USERNAME, Value: !Ref ProfileUser}",
        '{Name: PROFILEMESH_REDIS_ADDRESS, Value: !Sub "rediss://${Cluster.ClusterEndpoint.Address}:6379"}\n'
        "            - {Name: PROFILEMESH_REDIS_USERNAME, Value: !Ref ProfileUser}",
        "profile: PROFILEMESH_REDIS_URL is not set",
    ),
    (
        "ecs",
        "{Name: PROFILEMESH_REDIS_PASSWORD, ValueFrom: !Ref ReportingPassword}",
        "{Name: PROFILEMESH_REDIS_PASSWD, ValueFrom: !Ref ReportingPassword}",
        "reporting: PROFILEMESH_REDIS_PASSWORD does not come from a secret",
    ),
    (
        "ecs",
        "{Name: PROFILEMESH_REDIS_USERNAME, Value: !Ref AggregatorUser}",
        "{Name: PROFILEMESH_REDIS_USER, Value: !Ref AggregatorUser}",
        "aggregator: PROFILEMESH_REDIS_USERNAME is not set",
    ),
    ("ecs", "DnsName: reporting}", "DnsName: reports}", "names 'reporting', which no service answers to"),
    ("k8s", "terminationGracePeriodSeconds: 15", "terminationGracePeriodSeconds: 3", "stops after 3 s"),
    (
        "k8s",
        "readinessProbe: {exec: {command: [python3, -m, common.runtime.probe]}",
        "readinessProbe: {grpc: {port: 50051}",
        "profile: health check",
    ),
    (
        "k8s",
        "readinessProbe: {httpGet: {path: /readyz",
        "readinessProbe: {httpGet: {path: /ready",
        "gateway: health check",
    ),
    (
        "k8s",
        '- {name: PROFILEMESH_DRAIN_MS, value: "1000"}',
        '- {name: PROFILEMESH_DRAIN_MILLIS, value: "1000"}',
        "PROFILEMESH_DRAIN_MILLIS is read by no code",
    ),
    (
        "k8s",
        '- {name: PROFILEMESH_REPORTING_TARGET, value: "dns:///reporting:50052"}',
        '- {name: PROFILEMESH_REPORTING_TARGET, value: "dns:///reporting:50052"}\n'
        "            - {name: PROFILEMESH_REDIS_URL, value: redis://x:6379}",
        "gateway: PROFILEMESH_REDIS_URL is set, but the gateway has no cluster access",
    ),
]


@pytest.mark.parametrize(("artifact", "original", "broken", "reported"), BREAKS)
def test_a_broken_copy_is_caught(artifact: str, original: str, broken: str, reported: str, tmp_path: Path) -> None:
    path, read = ARTIFACTS[artifact]
    text = path.read_text()
    assert original in text, f"the break's original text is gone from {path.name}; update BREAKS"
    copy = tmp_path / path.name
    copy.write_text(text.replace(original, broken, 1))
    wired = read(copy.read_text())
    found = problems(wired) + (secret_problems(wired) if artifact != "compose" else [])
    assert any(reported in problem for problem in found), found


def _k8s_with_policies(manifests: str | None = None, policies: str | None = None) -> dict[str, Wiring]:
    """The Deployments and the NetworkPolicies together, as `kubectl apply -k` applies them."""
    return from_k8s(
        (manifests if manifests is not None else K8S.read_text())
        + "\n---\n"
        + (policies if policies is not None else NETWORK_POLICIES.read_text())
    )


def test_k8s_has_mutual_tls_the_allow_list_and_network_policies() -> None:
    wired = _k8s_with_policies()
    assert mtls_problems(wired) == []
    assert network_problems(wired) == []


# Deliberately broken copies of the mesh security: (file, original, broken, what is reported).
MESH_BREAKS = [
    (
        K8S,
        "- {name: PROFILEMESH_GRPC_CA_FILE, value: /etc/profilemesh/grpc/ca.crt}\n",
        "",
        "profile: PROFILEMESH_GRPC_CA_FILE is not set: gRPC without mutual TLS",
    ),
    (
        K8S,
        "- {name: PROFILEMESH_GRPC_CERT_FILE, value: /etc/profilemesh/grpc/tls.crt}",
        "- {name: PROFILEMESH_GRPC_CERT_FILE, value: /tmp/tls.crt}",
        "profile: PROFILEMESH_GRPC_CERT_FILE (/tmp/tls.crt) is not in a mounted Secret",
    ),
    (
        K8S,
        "/profilemesh.profile.v1.ProfileService/=gateway;",
        "/profilemesh.profile.v1.ProfileService/=*;",
        "profile: /profilemesh.profile.v1.ProfileService/ is open to any certificate",
    ),
    (
        K8S,
        "/profilemesh.profile.v1.ProfileService/=gateway;",
        "/profilemesh.profile.v1.ProfileService/=gateway;/profilemesh.profile.v1.ProfileService/DeleteProfile=gateway,debug;",
        "profile: /profilemesh.profile.v1.ProfileService/DeleteProfile is allowed to ['debug', 'gateway']",
    ),
    (
        K8S,
        "/profilemesh.profile.v1.ProfileService/=gateway;/profilemesh.reporting.v1.ReportingService/=gateway;",
        "/profilemesh.profile.v1.ProfileService/GetProfile=gateway;/profilemesh.reporting.v1.ReportingService/=gateway;",
        "profile: /profilemesh.profile.v1.ProfileService/CreateProfile is allowed to [], not to the gateway alone",
    ),
    (NETWORK_POLICIES, "  policyTypes: [Ingress, Egress]\n", "  policyTypes: [Ingress]\n", "no default-deny"),
    (
        NETWORK_POLICIES,
        "    - from:\n"
        "        - podSelector: {matchLabels: {app.kubernetes.io/name: profilemesh, app.kubernetes.io/component: gateway}}\n"
        "      ports: [{protocol: TCP, port: 50051}",
        "    - ports: [{protocol: TCP, port: 50051}",
        "profile: its gRPC port 50051 is reachable from ['outside']",
    ),
    (
        NETWORK_POLICIES,
        "values: [profile, reporting, aggregator]",
        "values: [profile, reporting, aggregator, gateway]",
        "the cluster's port 6379 is reachable from ['aggregator', 'gateway', 'migrate', 'profile', 'reporting']",
    ),
    (
        NETWORK_POLICIES,
        "    - to: [{ipBlock: {cidr: 10.0.64.0/20}}]\n      ports: [{protocol: TCP, port: 6379}]",
        "    - to: [{ipBlock: {cidr: 10.0.64.0/20}}]",
        "",  # every port of the cluster's subnet: still only the services (checked: nothing reported)
    ),
    (
        NETWORK_POLICIES,
        "      ports: [{protocol: TCP, port: 50051}]\n",
        "      ports: [{protocol: TCP, port: 50061}]\n",
        "profile: the gateway can't reach its gRPC port 50051",
    ),
]


@pytest.mark.parametrize(("path", "original", "broken", "reported"), MESH_BREAKS)
def test_a_broken_copy_of_the_mesh_security_is_caught(path: Path, original: str, broken: str, reported: str) -> None:
    text = path.read_text()
    assert original in text, f"the break's original text is gone from {path.name}; update MESH_BREAKS"
    copy = text.replace(original, broken, 1)
    wired = _k8s_with_policies(copy, None) if path == K8S else _k8s_with_policies(None, copy)
    found = mtls_problems(wired) + network_problems(wired)
    if reported:
        assert any(reported in problem for problem in found), found
    else:
        assert found == []


def test_cert_manager_example_makes_the_secrets_the_deployments_mount() -> None:
    """Each component's Certificate: the Secret its Deployment mounts, its identity (the allow-list names the
    gateway's), its Service's name (the gateway checks it) and localhost (the exec probe), from the mesh's own CA."""
    documents = load_all(CERT_MANAGER.read_text())
    certificates = {d["spec"]["secretName"]: d["spec"] for d in documents if d["kind"] == "Certificate"}
    wired = from_k8s(K8S.read_text())
    for component, wiring in wired.items():
        if component == MIGRATE:  # no gRPC: no certificate
            continue
        (secret,) = set(wiring.extra["secret_mounts"].values())
        spec = certificates[secret]
        assert spec["commonName"] == component
        assert {component, "localhost"} <= set(spec["dnsNames"]), component
        assert {"client auth", "server auth"} <= set(spec["usages"])
        (issuer,) = [
            d for d in documents if d["kind"] == "Issuer" and d["metadata"]["name"] == spec["issuerRef"]["name"]
        ]
        assert issuer["spec"]["ca"]["secretName"] == "profilemesh-mesh-ca"
    assert certificates["profilemesh-mesh-ca"]["isCA"] is True
    assert "gateway" in wired["profile"].env["PROFILEMESH_GRPC_ALLOWED_CLIENTS"]


def test_a_plain_password_or_credentials_in_the_url_are_caught() -> None:
    secret = (
        "- name: PROFILEMESH_REDIS_PASSWORD\n"
        "              valueFrom: {secretKeyRef: {name: profilemesh-cluster, key: profile-password}}"
    )
    original = K8S.read_text()
    assert secret in original
    plain = original.replace(secret, '- {name: PROFILEMESH_REDIS_PASSWORD, value: "hunter2"}')
    assert secret_problems(from_k8s(plain)) == ["profile: PROFILEMESH_REDIS_PASSWORD is a plain value, not a secret"]
    url = (
        "- name: PROFILEMESH_REDIS_URL\n"
        "              valueFrom: {configMapKeyRef: {name: profilemesh-cluster, key: url}}"
    )
    assert url in original
    in_url = original.replace(url, '- {name: PROFILEMESH_REDIS_URL, value: "rediss://profile:hunter2@cluster:6379"}', 1)
    assert secret_problems(from_k8s(in_url)) == [
        "profile: PROFILEMESH_REDIS_URL carries credentials; give PROFILEMESH_REDIS_USERNAME and a secret"
    ]


def test_k8s_pods_run_non_root_read_only() -> None:
    for component, wiring in from_k8s(K8S.read_text()).items():
        pod, container = wiring.extra["security"]
        assert pod["runAsNonRoot"] is True and pod["runAsUser"] != 0, component
        assert container["readOnlyRootFilesystem"] is True and container["allowPrivilegeEscalation"] is False


def test_cloudformation_template_passes_cfn_lint_and_checkov() -> None:
    lint = subprocess.run([TOOLS / "cfn-lint", ECS], capture_output=True, text=True)
    assert lint.returncode == 0 and lint.stdout == "", lint.stdout
    checkov = subprocess.run(
        [TOOLS / "checkov", "-f", ECS, "--framework", "cloudformation", "--skip-download", "-o", "json"],
        capture_output=True,
        text=True,
        env={"BC_SKIP_MAPPING": "TRUE", "PATH": "/usr/bin:/bin"},
    )
    report = json.loads(checkov.stdout)
    failed = [(check["check_id"], check["resource"]) for check in report["results"]["failed_checks"]]
    assert failed == [], failed
    # Each check we skip is justified next to its resource (Metadata.checkov.skip[].comment).
    skipped = [check["check_id"] for check in report["results"]["skipped_checks"]]
    justified = [
        skip["id"]
        for resource in load_all(ECS.read_text())[0]["Resources"].values()
        for skip in resource.get("Metadata", {}).get("checkov", {}).get("skip", [])
        if len(skip.get("comment", "")) > 20
    ]
    assert skipped and sorted(skipped) == sorted(justified)


def test_k8s_manifests_validate_against_the_schemas() -> None:
    manifests = [
        K8S,
        NETWORK_POLICIES,
        ROOT / "deploy" / "k8s" / "namespace.yaml",
        ROOT / "deploy" / "k8s" / "secret.example.yaml",
    ]
    done = subprocess.run(
        [TOOLS / "kubernetes-validate", "--strict", "-k", "1.31.0", *manifests], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("passed") == 24, done.stdout


def test_compose_file_is_read_by_podman_compose() -> None:
    done = subprocess.run([TOOLS / "podman-compose", "-f", COMPOSE, "config"], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert "profilemesh-gateway" in done.stdout and "cluster-create" in done.stdout


def test_memorydb_users_have_the_acl_rules_of_common_acl() -> None:
    """The template's MemoryDB users grant exactly what the local cluster's ACL users do (common/storage/acl.py)."""
    template = load_all(ECS.read_text())[0]
    users = {
        name: resource for name, resource in template["Resources"].items() if resource["Type"] == "AWS::MemoryDB::User"
    }
    expected = {"ProfileUser": "profile_svc", "ReportingUser": "reporting_svc", "AggregatorUser": "aggregator_svc"}
    assert set(users) == {*expected, "MigrateUser"}
    for name, component in expected.items():
        assert users[name]["Properties"]["AccessString"] == f"on {rules(component)}", name
    assert users["MigrateUser"]["Properties"]["AccessString"] == f"on {acl.MIGRATION}"


def test_kustomize_renders_valid_manifests_that_agree_with_the_code(tmp_path: Path) -> None:
    """`kubectl kustomize deploy/k8s` (what `kubectl apply -k` applies): every object in the namespace, the image
    and the cluster's ConfigMap (its generated name) filled in, valid against the schemas, wiring still sound."""
    rendered = subprocess.run([TOOLS / "kubectl", "kustomize", ROOT / "deploy" / "k8s"], capture_output=True, text=True)
    assert rendered.returncode == 0, rendered.stderr
    documents = load_all(rendered.stdout)
    kinds = Counter(document["kind"] for document in documents)
    assert kinds == {
        "Namespace": 1,
        "ConfigMap": 1,
        "Deployment": 4,
        "Job": 1,
        "Service": 3,
        "PodDisruptionBudget": 4,
        "HorizontalPodAutoscaler": 2,
        "NetworkPolicy": 8,
    }
    assert {d["metadata"].get("namespace") for d in documents if d["kind"] != "Namespace"} == {"profilemesh"}
    (config_map,) = [document for document in documents if document["kind"] == "ConfigMap"]
    assert config_map["metadata"]["name"].startswith("profilemesh-cluster-")  # the generator's hash suffix
    assert config_map["data"]["url"].startswith("rediss://")
    for document in documents:
        if document["kind"] in ("Deployment", "Job"):
            (container,) = document["spec"]["template"]["spec"]["containers"]
            assert container["image"] == "registry.example.com/profilemesh:0.1.0"
            for entry in container["env"]:
                if "configMapKeyRef" in entry.get("valueFrom", {}):
                    assert entry["valueFrom"]["configMapKeyRef"]["name"] == config_map["metadata"]["name"]
    wired = from_k8s(rendered.stdout)
    assert problems(wired) == [] and secret_problems(wired) == []
    assert mtls_problems(wired) == [] and network_problems(wired) == []
    assert migration_problems(wired, acl.MIGRATION_USER) == []
    assert {d["metadata"]["name"] for d in documents if d["kind"] == "NetworkPolicy"} >= {"profilemesh-default-deny"}
    manifests = tmp_path / "rendered.yaml"
    manifests.write_text(rendered.stdout)
    done = subprocess.run(
        [TOOLS / "kubernetes-validate", "--strict", "-k", "1.31.0", manifests], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("passed") == sum(kinds.values()), done.stdout


def test_every_deployment_runs_the_migrate_step_before_the_services() -> None:
    """compose's cluster-migrate, the ECS MigrateTask (its own MemoryDB user, let in by MemoryDB's security group) and
    the Kubernetes Job (its own user, let out to the cluster by a NetworkPolicy): docs/functions.md."""
    assert compose_migration_problems(COMPOSE.read_text()) == []
    template = load_all(ECS.read_text())[0]["Resources"]
    assert migration_problems(from_ecs(ECS.read_text()), "{'Ref': 'MigrateUser'}") == []
    ingress = template["MemoryDBSecurityGroup"]["Properties"]["SecurityGroupIngress"]
    assert {"Ref": "MigrateSecurityGroup"} in [rule["SourceSecurityGroupId"] for rule in ingress]
    wired = _k8s_with_policies()
    assert migration_problems(wired, acl.MIGRATION_USER) == [] and network_problems(wired) == []


# Deliberately broken copies of the migrate step: (artifact, original, broken, what is reported).
MIGRATE_BREAKS = [
    (
        "compose",
        'command: ["profilemesh", "cluster", "migrate"]',
        'command: ["profilemesh", "status"]',
        "no one-off runs `profilemesh cluster migrate`",
    ),
    (
        "compose",
        "      PROFILEMESH_PROFILE_METRICS_LISTEN: 0.0.0.0:9101\n    depends_on:\n      cluster-migrate:",
        "      PROFILEMESH_PROFILE_METRICS_LISTEN: 0.0.0.0:9101\n    depends_on:\n      cluster-create:",
        "profile: does not wait for cluster-migrate to succeed",
    ),
    ("ecs", "Command: [profilemesh, cluster, migrate]", "Command: [profilemesh, status]", "no one-off runs"),
    (
        "ecs",
        "{Name: PROFILEMESH_REDIS_PASSWORD, ValueFrom: !Ref MigratePassword}",
        "{Name: PROFILEMESH_REDIS_PASSWD, ValueFrom: !Ref MigratePassword}",
        "migrate: PROFILEMESH_REDIS_PASSWORD does not come from a secret",
    ),
    ("k8s", "command: [profilemesh, cluster, migrate]", "command: [profilemesh, status]", "no one-off runs"),
    (
        "k8s",
        "- {name: PROFILEMESH_REDIS_USERNAME, value: profilemesh-migrate}",
        "- {name: PROFILEMESH_REDIS_USERNAME, value: profilemesh-profile}",
        "migrate: logs in as 'profilemesh-profile', not 'profilemesh-migrate'",
    ),
    (
        "policies",
        "  name: profilemesh-migrate-to-cluster\nspec:\n"
        "  podSelector: {matchLabels: {app.kubernetes.io/name: profilemesh, app.kubernetes.io/component: migrate}}",
        "  name: profilemesh-migrate-to-cluster\nspec:\n"
        "  podSelector: {matchLabels: {app.kubernetes.io/name: profilemesh, app.kubernetes.io/component: migrator}}",
        "migrate can't reach the cluster's port 6379",
    ),
]


@pytest.mark.parametrize(("artifact", "original", "broken", "reported"), MIGRATE_BREAKS)
def test_a_broken_copy_of_the_migrate_step_is_caught(artifact: str, original: str, broken: str, reported: str) -> None:
    path = NETWORK_POLICIES if artifact == "policies" else ARTIFACTS[artifact][0]
    text = path.read_text()
    assert original in text, f"the break's original text is gone from {path.name}; update MIGRATE_BREAKS"
    copy = text.replace(original, broken, 1)
    if artifact == "compose":
        found = compose_migration_problems(copy)
    elif artifact == "ecs":
        found = migration_problems(from_ecs(copy), "{'Ref': 'MigrateUser'}")
    else:
        wired = _k8s_with_policies(copy, None) if artifact == "k8s" else _k8s_with_policies(None, copy)
        found = migration_problems(wired, acl.MIGRATION_USER) + network_problems(wired)
    assert any(reported in problem for problem in found), found
