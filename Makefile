# syncgov — `make help` lists every target.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.setup-done
PIP := $(BIN)/python -m pip --disable-pip-version-check -q
PROTO_SOURCES := $(shell find protos/syncgov -name '*.proto' 2>/dev/null)
GEN_STAMP := libs/genproto/.generated

.DEFAULT_GOAL := help

.PHONY: help
help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Stubs first (setuptools finds the generated `syncgov` package at install time), then the project.
$(STAMP): pyproject.toml $(BIN)/python
	$(PIP) install 'grpcio-tools==1.85.*' 'googleapis-common-protos>=1.70,<2'
	$(BIN)/python tools/gen_protos.py
	$(PIP) install -e '.[dev]'
	@touch $(GEN_STAMP) $(STAMP)

$(GEN_STAMP): $(PROTO_SOURCES) $(STAMP)
	$(BIN)/python tools/gen_protos.py
	@touch $(GEN_STAMP)

.PHONY: setup
setup: $(STAMP) $(GEN_STAMP) ## create .venv, install everything, generate stubs (idempotent)

.PHONY: proto
proto: $(STAMP) ## regenerate Python stubs from protos/
	$(BIN)/python tools/gen_protos.py
	@touch $(GEN_STAMP)

.PHONY: test
test: setup ## run the whole test suite (starts its own nats-server and valkey-server)
	$(BIN)/pytest $(PYTEST_ARGS)

.PHONY: test-unit
test-unit: setup ## run the unit tests only (no sockets)
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

.PHONY: fuzz
fuzz: setup ## hostile input, nightly size: 10,000+ requests and raw bodies against every RPC, statuses per RPC
	SYNCGOV_FUZZ_INPUTS=$${SYNCGOV_FUZZ_INPUTS:-10800} $(BIN)/pytest tests/fuzz -m fuzz $(PYTEST_ARGS)

.PHONY: up
up: setup ## start nats-server, valkey-server and every service; Ctrl-C stops them all
	$(BIN)/syncgov up $(UP_ARGS)

.PHONY: lint
lint: setup ## ruff (lint and format check) and buf lint
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	cd protos && ../$(BIN)/buf lint

.PHONY: typecheck
typecheck: setup ## mypy: the whole tree type-checks; libs/runtime, libs/policy and services/ strictly
	$(BIN)/mypy

.PHONY: breaking
breaking: setup ## buf breaking: protos/ against the last commit on main, offline (docs/decisions.md)
	BUF=$(CURDIR)/$(BIN)/buf bash tools/buf_breaking.sh

.PHONY: manifests
manifests: setup ## render every kustomize overlay under deploy/k8s/overlays with kubectl kustomize
	@set -e; for overlay in deploy/k8s/overlays/*/; do \
		echo "kubectl kustomize $$overlay"; $(BIN)/kubectl kustomize "$$overlay" >/dev/null; \
	done

PROMTOOL := .cache/tools/bin/promtool

# Debian's prometheus package unpacked with dpkg -x (no maintainer scripts, no service): only promtool is kept.
.PHONY: promtool
promtool: ## promtool into .cache/tools/bin for the alert-rule tests (apt-get download prometheus); says why when it cannot
	@set -e; \
	if [ -x $(PROMTOOL) ] || command -v promtool >/dev/null; then exit 0; fi; \
	if ! command -v apt-get >/dev/null || ! command -v dpkg >/dev/null; then \
		echo "promtool: no apt-get/dpkg here, not installed (the promtool tests will skip)"; exit 0; fi; \
	tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	if ! (cd "$$tmp" && { apt-get download -q prometheus || { apt-get update -q && apt-get download -q prometheus; }; }); then \
		echo "promtool: apt-get download prometheus failed, not installed (the promtool tests will skip)"; exit 0; fi; \
	dpkg -x "$$tmp"/prometheus_*.deb "$$tmp/root"; \
	mkdir -p $(dir $(PROMTOOL)); \
	install -m 0755 "$$tmp/root/usr/bin/promtool" $(PROMTOOL); \
	$(PROMTOOL) --version | head -1

# Debian's chromium and chromium-driver for the web view's Selenium test (no browser download: the network is closed).
.PHONY: browser
browser: ## chromium + chromium-driver for the web view's browser test (apt-get install); says why when it cannot
	@set -e; \
	if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then exit 0; fi; \
	if ! command -v apt-get >/dev/null; then \
		echo "browser: no apt-get here, chromium not installed (the web view test will skip)"; exit 0; fi; \
	sudo=; if [ "$$(id -u)" -ne 0 ]; then sudo="sudo -n"; fi; \
	install="$$sudo apt-get install -y -q --no-install-recommends chromium chromium-driver"; \
	if ! { $$install || { $$sudo apt-get update -q && $$install; }; }; then \
		echo "browser: apt-get install chromium chromium-driver failed, not installed (the web view test will skip)"; exit 0; fi; \
	/usr/bin/chromium --version

.PHONY: check
check: promtool browser lint typecheck breaking manifests test ## what CI runs: promtool, browser, lint, types, contract breaks, manifests, the tests

.PHONY: fmt
fmt: setup ## format the code with ruff
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

.PHONY: bench
bench: setup ## run the publish benchmark (tracing off and on), then the exception-router's; prints figures (about 9-10 + 3-4 minutes)
	$(BIN)/python bench/publish_po.py $(BENCH_ARGS)
	$(BIN)/python bench/exceptions.py $(EXCEPTIONS_BENCH_ARGS)

.PHONY: chaos
chaos: setup ## faults under load (SIGKILLs, nats-server restarts, Valkey freeze/wipe, cut links), invariants from the streams (~2 min)
	$(BIN)/python bench/chaos.py --verbose $(CHAOS_ARGS)

.PHONY: clean
clean: ## remove generated stubs, local stack data and caches (keeps .venv)
	rm -rf libs/genproto/syncgov .syncgov .pytest_cache .ruff_cache .mypy_cache $(GEN_STAMP)

.PHONY: distclean
distclean: clean ## also remove .venv
	rm -rf $(VENV)
