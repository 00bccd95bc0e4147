"""Seeing inside the mesh: a real Prometheus scraping every component, request ids in JSON logs,
traces across gateway, service and cluster, and the `profilemesh` command against a running system."""

from __future__ import annotations

import asyncio
import http.client
import itertools
import json
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aggregator_svc.lag import SCRIPTS as AGGREGATOR_SCRIPTS
from aggregator_svc.lag import node_figures, partition_figures
from common.storage import functions, keys
from common.storage.nodes import key_slot
from localdev.otlp_sink import OtlpSink
from localdev.ports import free_ports
from localdev.prometheus import CONFIG, RULES, Prometheus
from localdev.system import SERVICES, System, on_free_ports
from profilemesh_cli.main import main
from profilemesh_cli.status import figures_per_node
from tests.conftest import PARTITIONS, TEST_SETTINGS, running_system
from tests.helpers import metric_sum, wait_until

ROOT = Path(__file__).resolve().parent.parent
LAG_ON_NODE = functions.function(AGGREGATOR_SCRIPTS / "lag_on_node.lua").name
DASHBOARD = ROOT / "observability" / "grafana-dashboard.json"
PROFILE = "/profilemesh.profile.v1.ProfileService/"
REPORTING = "/profilemesh.reporting.v1.ReportingService/"


@pytest.fixture(scope="module")
def otlp() -> Iterator[OtlpSink]:
    sink = OtlpSink(free_ports(1)[0]).start()
    yield sink
    sink.stop()


@pytest.fixture(scope="module")
def observed(tmp_path_factory: pytest.TempPathFactory, otlp: OtlpSink) -> Iterator[System]:
    """A system of the module's own: DEBUG logs (a line per request), spans sent to `otlp`. A quiet partition is
    taken every 10 s, not the suite's 2: each take is a span, and at 4,096 partitions 2,048 quiet takes a second,
    traced and logged, kept the aggregator's takes waiting past their deadline on two cores."""
    settings = {
        **TEST_SETTINGS,
        "PROFILEMESH_LOG_LEVEL": "DEBUG",
        "PROFILEMESH_AGGREGATOR_QUIET_CHECK_S": "10",
        **otlp.env(),
    }
    with running_system(tmp_path_factory.mktemp("observed"), settings) as running:
        yield running


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory, observed: System) -> Iterator[Prometheus]:
    server = Prometheus(
        tmp_path_factory.mktemp("prometheus"), free_ports(1)[0], observed.metrics_ports, scrape_interval_s=1
    )
    try:
        server.start()
        yield server
    finally:
        server.stop()


def request(
    port: int, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None, raw: bytes | None = None
) -> tuple[int, dict[str, str], Any]:
    """One request to the gateway: status, response headers, decoded JSON body."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        data = raw if raw is not None else json.dumps(body).encode() if body is not None else None
        connection.request(method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
        reply = connection.getresponse()
        return reply.status, dict(reply.getheaders()), json.loads(reply.read())
    finally:
        connection.close()


def _vector(prometheus: Prometheus, promql: str, labels: tuple[str, ...]) -> dict[tuple[str, ...], int]:
    return {
        tuple(r["metric"].get(label, "") for label in labels): int(float(r["value"][1]))
        for r in prometheus.query(promql)
    }


def test_prometheus_scrapes_exact_counts_per_route_and_method(
    observed: System, prometheus: Prometheus, tmp_path: Path
) -> None:
    port = observed.gateway_port
    wait_until(
        lambda: _vector(prometheus, "up", ("job",)) == {(name,): 1 for name in SERVICES},
        30,
        what="every component scraped and up",
    )
    rest_query = 'sum by (route, method, status) (profilemesh_http_requests_total{route!~"/healthz|/readyz"})'
    grpc_query = 'sum by (method, code) (profilemesh_grpc_server_requests_total{method=~"/profilemesh.*"})'
    rest_before = _vector(prometheus, rest_query, ("route", "method", "status"))
    grpc_before = _vector(prometheus, grpc_query, ("method", "code"))
    applied_query = "sum(profilemesh_aggregator_events_applied_total)"
    applied_before = _vector(prometheus, applied_query, ()).get((), 0)

    walk = [
        ("POST", "/profile/ana", {"email": "ana@example.com"}, 201),
        ("POST", "/profile/ana", {"email": "ana@example.com"}, 409),
        ("GET", "/profile/ana", None, 200),
        ("GET", "/profile/ana", None, 200),
        ("GET", "/profile/ana", None, 200),
        ("GET", "/profile/nobody", None, 404),
        ("PATCH", "/profile/ana", {"username": "Ana"}, 200),
        ("GET", "/reporting/profileStats/3", None, 200),
        ("GET", "/reporting/users/ana/stats", None, 200),
        ("GET", "/reporting/operationTotals", None, 200),
        ("DELETE", "/profile/ana", None, 200),
        ("DELETE", "/profile/ana", None, 404),
    ]
    for method, path, body, status in walk:
        assert request(port, method, path, body)[0] == status, (method, path)
    assert request(port, "POST", "/profile/bob", raw=b"{not json")[0] == 400  # never reaches a service

    route_of = {
        "/profile": "/profile/{user}",
        "/reporting/profileStats": "/reporting/profileStats/{limit}",
        "/reporting/users": "/reporting/users/{user}/stats",
        "/reporting/operationTotals": "/reporting/operationTotals",
    }
    grpc_of = {
        "POST": PROFILE + "CreateProfile",
        "GET": PROFILE + "GetProfile",
        "PATCH": PROFILE + "UpdateProfile",
        "DELETE": PROFILE + "DeleteProfile",
    }
    code_of = {200: "OK", 201: "OK", 404: "NOT_FOUND", 409: "ALREADY_EXISTS"}
    rest_expected: Counter = Counter()
    grpc_expected: Counter = Counter()
    for method, path, _, status in walk:
        prefix = next(p for p in route_of if path.startswith(p))
        rest_expected[(route_of[prefix], method, str(status))] += 1
        rpc = (
            grpc_of[method]
            if prefix == "/profile"
            else REPORTING
            + {
                "/reporting/profileStats": "GetTopProfiles",
                "/reporting/users": "GetProfileStats",
                "/reporting/operationTotals": "GetOperationTotals",
            }[prefix]
        )
        grpc_expected[(rpc, code_of[status])] += 1
    rest_expected[("/profile/{user}", "POST", "400")] += 1

    def deltas(query: str, labels: tuple[str, ...], before: dict) -> dict:
        now = _vector(prometheus, query, labels)
        return {key: value - before.get(key, 0) for key, value in now.items() if value - before.get(key, 0)}

    wait_until(
        lambda: deltas(rest_query, ("route", "method", "status"), rest_before) == dict(rest_expected),
        30,
        what="Prometheus to count every REST request",
    )
    wait_until(
        lambda: deltas(grpc_query, ("method", "code"), grpc_before) == dict(grpc_expected),
        30,
        what="Prometheus to count every gRPC call",
    )
    assert deltas(rest_query, ("route", "method", "status"), rest_before) == dict(rest_expected)
    assert deltas(grpc_query, ("method", "code"), grpc_before) == dict(grpc_expected)

    # The aggregator applied every event: lag and pending back to 0 on every partition, all of them reported. The
    # gauges' first round reads every partition, one call per primary; then each with a backlog every second.
    lag_query = "max by (partition) (profilemesh_aggregator_lag_entries + profilemesh_aggregator_pending_entries)"
    wait_until(
        lambda: (lambda v: len(v) == PARTITIONS and set(v.values()) == {0})(
            _vector(prometheus, lag_query, ("partition",))
        ),
        30,
        what="the aggregator's lag to return to 0",
    )
    # One event per successful operation: 1 create, 3 reads, 1 update, 1 delete.
    wait_until(lambda: _vector(prometheus, applied_query, ())[()] - applied_before == 6, 10, what="6 events applied")
    assert (
        _vector(prometheus, 'sum(profilemesh_cluster_commands_total{kind="script",name="write_profile"})', ())[()] >= 2
    )
    assert _vector(prometheus, "count(process_resident_memory_bytes)", ())[()] == len(SERVICES)

    # Every panel of the Grafana dashboard is a query Prometheus accepts.
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        for target in panel["targets"]:
            prometheus.query(target["expr"])  # raises on a bad expression

    for config in (CONFIG, prometheus.config_path):
        checked = subprocess.run(["promtool", "check", "config", str(config)], capture_output=True, text=True)
        assert checked.returncode == 0, checked.stdout + checked.stderr
    checked = subprocess.run(["promtool", "check", "rules", str(RULES)], capture_output=True, text=True)
    assert checked.returncode == 0 and "4 rules found" in checked.stdout, checked.stdout + checked.stderr


def _log_lines(system: System, component: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (system.log_dir / f"{component}.log").read_text().splitlines()]


def test_request_id_reaches_every_log_line_about_the_request(observed: System) -> None:
    port = observed.gateway_port
    assert request(port, "POST", "/profile/rid-user", {"email": "r@example.com"})[0] == 201
    status, headers, body = request(port, "GET", "/profile/rid-user", headers={"X-Request-Id": "abc123"})
    assert status == 200 and body == {"email": "r@example.com"}
    assert headers["X-Request-Id"] == "abc123"

    def lines_with(component: str) -> list[dict[str, Any]]:
        return [line for line in _log_lines(observed, component) if line.get("request_id") == "abc123"]

    gateway_lines = wait_until(lambda: lines_with("gateway"), 10, what="the gateway's line about abc123")
    service_lines = wait_until(lambda: lines_with("profile_svc"), 10, what="profile_svc's line about abc123")
    assert any("GET /profile/rid-user answered 200" in line["message"] for line in gateway_lines)
    assert any("GetProfile answered OK" in line["message"] for line in service_lines)
    for line in gateway_lines + service_lines:
        assert {"ts", "level", "component", "message"} <= line.keys()
    assert not [line for line in _log_lines(observed, "reporting_svc") if line.get("request_id") == "abc123"]

    # Without one, the gateway makes an id and returns it; a malformed one is refused, naming the header.
    _, headers, _ = request(port, "GET", "/profile/rid-user")
    assert len(headers["X-Request-Id"]) == 32 and headers["X-Request-Id"] != "abc123"
    status, headers, body = request(port, "GET", "/profile/rid-user", headers={"X-Request-Id": "bad id\t!"})
    assert status == 400 and "X-Request-Id" in body["message"]


def test_every_log_line_is_json(observed: System, system: System) -> None:
    for running in (observed, system):
        for component in SERVICES:
            lines = (running.log_dir / f"{component}.log").read_text().splitlines()
            assert lines, component
            for line in lines:
                parsed = json.loads(line)  # raises on any line that is not JSON
                assert parsed["component"] == component


def test_one_request_one_trace_across_gateway_service_and_script(observed: System, otlp: OtlpSink) -> None:
    port = observed.gateway_port
    assert request(port, "POST", "/profile/traced", {"email": "t@example.com"})[0] == 201
    assert request(port, "GET", "/profile/traced", headers={"X-Request-Id": "trace-me"})[0] == 200

    def trace_of_request() -> list:
        spans = otlp.received()
        roots = [
            s for s in spans if s.service == "gateway" and s.attributes.get("profilemesh.request_id") == "trace-me"
        ]
        if len(roots) != 1:
            return []
        trace = [s for s in spans if s.trace_id == roots[0].trace_id]
        return trace if len(trace) >= 3 else []

    trace = wait_until(trace_of_request, 15, what="the request's spans at the OTLP receiver")
    by_service = {(s.service, s.name): s for s in trace}
    assert set(by_service) == {
        ("gateway", "GET /profile/{user}"),
        ("profile_svc", PROFILE + "GetProfile"),
        ("profile_svc", "script get_profile"),
    }, by_service.keys()
    gateway = by_service[("gateway", "GET /profile/{user}")]
    service = by_service[("profile_svc", PROFILE + "GetProfile")]
    script = by_service[("profile_svc", "script get_profile")]
    assert gateway.parent_span_id == ""  # the request's root
    assert service.parent_span_id == gateway.span_id
    assert script.parent_span_id == service.span_id
    assert service.attributes["profilemesh.request_id"] == "trace-me"


def _profilemesh(system: System | None, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The installed `profilemesh` command (make installs it into the venv), pointed at `system`."""
    command = Path(sys.executable).with_name("profilemesh")
    assert command.exists(), "make did not install the profilemesh command"
    return subprocess.run(
        [str(command), *args], env=env or system.client_env(), capture_output=True, text=True, timeout=60
    )


def test_profilemesh_commands_through_the_grpc_api(observed: System) -> None:
    assert _profilemesh(observed, "profile", "create", "cli-user", "email=c@example.com", "team=blue").returncode == 0
    got = _profilemesh(observed, "profile", "get", "cli-user", "--json")
    assert got.returncode == 0 and json.loads(got.stdout)["fields"] == {"email": "c@example.com", "team": "blue"}
    assert _profilemesh(observed, "profile", "update", "cli-user", "team=red").returncode == 0
    assert "team: red" in _profilemesh(observed, "profile", "get", "cli-user").stdout
    wait_until(
        lambda: json.loads(_profilemesh(observed, "stats", "cli-user", "--json").stdout)["reads"] == "2",
        10,
        what="the two reads to be counted",
    )  # proto3 JSON writes int64 as a string
    # The top list follows the counts by a copy into its index (docs/architecture.md, "The top list's index"), and
    # on a healthy cluster no copy fails, even while the aggregator's first takes of 4,096 partitions fill the
    # client's concurrency bound.
    wait_until(
        lambda: (
            {"user": "cli-user", "score": "2"}
            in json.loads(_profilemesh(observed, "top", "1000", "--json").stdout)["results"]
        ),
        10,
        what="the two reads in the top list",
    )
    failed = metric_sum(observed.metrics_url("aggregator_svc"), "profilemesh_aggregator_top_copies_total", "failed")
    assert failed == 0, "copies into the top list's index failed on a healthy cluster"
    assert "cli-user" in _profilemesh(observed, "top", "1000").stdout
    bad = _profilemesh(observed, "top", "0")
    assert bad.returncode == 1 and "INVALID_ARGUMENT: limit must be an integer from 1 to 1000" in bad.stderr
    bad = _profilemesh(observed, "profile", "create", "cli-user2", "no-equals-sign")
    assert bad.returncode == 2 and "NAME=VALUE" in bad.stderr
    assert _profilemesh(observed, "profile", "delete", "cli-user").returncode == 0
    missing = _profilemesh(observed, "profile", "get", "cli-user")
    assert missing.returncode == 1 and "NOT_FOUND: Profile not found for cli-user" in missing.stderr
    assert "usage: profilemesh" in _profilemesh(observed, "--help").stdout


@pytest.mark.parametrize(
    "args",
    [
        ["status"],
        ["top"],
        ["stats"],
        ["watch"],
        ["profile"],
        ["profile", "get"],
        ["profile", "create"],
        ["profile", "update"],
        ["profile", "delete"],
    ],
)
def test_every_profilemesh_command_has_help(args: list[str], capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exited:
        main([*args, "--help"])
    assert exited.value.code == 0
    assert f"usage: profilemesh {' '.join(args)}" in capsys.readouterr().out


def test_profilemesh_watch_shows_every_component(observed: System) -> None:
    watched = _profilemesh(observed, "watch", "--interval", "0.5", "--count", "2")
    assert watched.returncode == 0
    for component in SERVICES:
        assert component in watched.stdout


def test_profilemesh_says_when_nothing_is_running(tmp_path: Path) -> None:
    nobody = on_free_ports(tmp_path)  # never started
    for args in (["status"], ["profile", "get", "ana"], ["watch", "--count", "1"]):
        result = _profilemesh(nobody, *args)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert "running" in result.stderr and "Traceback" not in result.stderr, result.stderr


def test_profilemesh_status_lists_everything_and_fails_when_a_node_stops(observed: System) -> None:
    # A loaded machine can make a node look suspect for a moment (2 s node timeout): allow it to settle.
    healthy = wait_until(
        lambda: (lambda r: r if r.returncode == 0 else None)(_profilemesh(observed, "status", "--json")),
        30,
        interval_s=1,
        what="profilemesh status to report a healthy system",
    )
    report = json.loads(healthy.stdout)
    assert report["healthy"] and report["problems"] == []
    assert sorted(c["component"] for c in report["components"]) == sorted(SERVICES)
    assert all(c["status"] == "SERVING" for c in report["components"])
    assert sorted(n["address"] for n in report["nodes"]) == sorted(f"127.0.0.1:{p}" for p in observed.cluster.ports)
    primaries = [n for n in report["nodes"] if n["role"] == "primary"]
    assert len(primaries) == 3 and sorted(p for n in primaries for p in n["partitions"]) == list(range(PARTITIONS))
    assert [p["partition"] for p in report["partitions"]] == list(range(PARTITIONS))
    assert all({"length", "pending", "lag"} <= p.keys() for p in report["partitions"])
    text = _profilemesh(observed, "status")
    assert text.returncode == 0 and "status: healthy" in text.stdout

    # Stop a replica (the seed node, ports[0], stays): status names it and exits non-zero.
    index = next(i for i in range(1, 6) if observed.cluster.node(i).info("replication")["role"] == "slave")
    observed.cluster.stop_node(index)
    try:
        stopped = f"127.0.0.1:{observed.cluster.ports[index]}"
        broken = _profilemesh(observed, "status")
        assert broken.returncode == 1
        # Unreachable to status; or suspected or failed, when the cluster noticed first (2 s node timeout, busy machine).
        states = ("unreachable", "suspected", "failed")
        said = (f"node {stopped} (replica) is {state}" in broken.stdout for state in states)
        assert any(said) and "status: UNHEALTHY" in broken.stdout, broken.stdout
    finally:
        # Its shard can't confirm replica-durable changes without it: later tests of the module make some.
        observed.cluster.start_node(index)
        observed.cluster.wait_ready()


def test_lag_figures_count_undelivered_and_pending_entries(observed: System) -> None:
    """The figures behind the lag gauges and `profilemesh status`, for a group that reads slower than writes:
    read command by command (partition_figures, the status command's) and per node (lag_on_node.lua, the
    gauges'), the same."""
    users = list(
        itertools.islice((u for i in itertools.count() if keys.partition_of(u := f"lag{i}", PARTITIONS) == 5), 3)
    )
    stream = keys.events_key(5)

    async def check() -> None:
        client = observed.cluster.async_client()
        try:
            await client.xgroup_create(stream, "slow-reader", id="$", mkstream=True)
            for user in users:
                assert request(observed.gateway_port, "POST", f"/profile/{user}", {"email": "x"})[0] == 201
            await asyncio.sleep(0.05)
            now_ms = int(time.time() * 1000)

            async def figures_of(group: str, at_ms: int) -> dict[str, float]:
                read = await partition_figures(client, stream, group, at_ms)
                (row,) = await client.execute_command("FCALL", LAG_ON_NODE, 1, stream, group, stream)
                assert node_figures(row, at_ms) == read, (group, row, read)
                return read

            figures = await figures_of("slow-reader", now_ms)
            assert (figures["lag"], figures["pending"], figures["oldest_pending"]) == (3, 0, 0.0)
            assert figures["length"] >= 3 and figures["oldest_undelivered"] > 0
            no_group = await figures_of("no-such-group", now_ms)  # no reader yet: everything is undelivered
            assert no_group["lag"] == no_group["length"] and no_group["oldest_undelivered"] > 0
            await client.xreadgroup("slow-reader", "c1", {stream: ">"}, count=2)
            figures = await figures_of("slow-reader", now_ms + 1000)
            assert (figures["lag"], figures["pending"]) == (1, 2)
            assert figures["oldest_pending"] >= 1.0 and figures["oldest_undelivered"] >= 1.0

            # `profilemesh status` reads every partition with one lag_on_node call per primary, none one by one...
            nodes = observed.cluster.cluster_nodes()
            holder = {
                p: next(str(n.port) for n in nodes if n.is_primary and n.serves(key_slot(keys.events_key(p))))
                for p in range(PARTITIONS)
            }
            per_node = await figures_per_node(client, holder, 0, "slow-reader", now_ms + 1000)
            assert sorted(per_node) == list(range(PARTITIONS)) and per_node[5] == figures, per_node.get(5)
            # ...and, run as operators do, each row it shows is its own partition's.
            env = {**observed.client_env(), "PROFILEMESH_AGGREGATOR_GROUP": "slow-reader"}
            status = await asyncio.to_thread(_profilemesh, observed, "status", "--json", env=env)
            rows = {row["partition"]: row for row in json.loads(status.stdout)["partitions"]}
            assert sorted(rows) == list(range(PARTITIONS)), status.stdout[-2000:]
            assert (rows[5]["lag"], rows[5]["pending"]) == (1, 2), rows[5]
            others = [row for partition, row in rows.items() if partition != 5]
            assert all(row["pending"] == 0 and row["lag"] == row["length"] for row in others), others
        finally:
            await client.xgroup_destroy(stream, "slow-reader")
            await client.aclose()

    asyncio.run(check())
