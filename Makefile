# gapwatch developer entry points. `make test` is what CI runs (.ci/run).
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
STACK := deploy/local/stack
# Python sources we lint; tests are linted by ruff, type-checked paths come from pyproject.
PY_SRC := gapwatch edge training pipeline tests deploy

.PHONY: help venv lint format test stack-up stack-down stack-status demo demo-down clean edge-tarball

help:
	@echo "make venv        create .venv and install gapwatch[all] (re-runs when pyproject.toml changes)"
	@echo "make lint        ruff check, ruff format --check, mypy --strict, lint-imports"
	@echo "make format      ruff format + ruff check --fix"
	@echo "make test        start the local stack if needed, lint, run pytest against real services"
	@echo "make stack-up    deploy/local/stack up    (Mosquitto, Kafka, InfluxDB on loopback)"
	@echo "make stack-down  deploy/local/stack down"
	@echo "make demo        the end-to-end demo: SKAB (../shared/data) or the simulated fleet, live over MQTT"
	@echo "make demo-down   stop what make demo started (agent, sink, dashboard, the stack)"
	@echo "make edge-tarball  dist/gapwatch-edge-<version>-linux-{aarch64,x86_64}.tar.gz (offline installer)"

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[all]'
	@touch $@

lint: venv
	$(BIN)/ruff check $(PY_SRC)
	$(BIN)/ruff format --check $(PY_SRC)
	$(BIN)/mypy
	$(BIN)/lint-imports

format: venv
	$(BIN)/ruff format $(PY_SRC)
	$(BIN)/ruff check --fix $(PY_SRC)

# The stack is left as it was found: brought down afterwards only if this target started it,
# on success and on failure alike, and pytest's (or lint's) exit code is kept.
test: venv
	@was_up=0; $(STACK) status >/dev/null 2>&1 && was_up=1; \
	rc=0; \
	$(STACK) up || rc=$$?; \
	if [ $$rc -eq 0 ]; then $(MAKE) --no-print-directory lint || rc=$$?; fi; \
	if [ $$rc -eq 0 ]; then GAPWATCH_REQUIRE_SERVICES=1 $(BIN)/pytest || rc=$$?; fi; \
	if [ $$was_up -eq 0 ]; then $(STACK) down || true; fi; \
	exit $$rc

stack-up:
	$(STACK) up

stack-down:
	$(STACK) down

stack-status:
	$(STACK) status

# The end-to-end demo (issue #6): `gapwatch demo` on the local stack, which it starts if needed.
# The agent, sink and dashboard keep running afterwards; `make demo-down` stops them, and the
# stack too when `make demo` was the one that started it (recorded in DEMO_STATE).
# DEMO_ARGS passes options through, e.g. make demo DEMO_ARGS="--speed 50".
DEMO_STATE := $(or $(GAPWATCH_STATE_DIR),.gapwatch)/demo
DEMO_ARGS ?=
demo: venv
	@mkdir -p "$(DEMO_STATE)"; \
	if ! $(STACK) status >/dev/null 2>&1; then touch "$(DEMO_STATE)/stack-started-by-demo"; fi; \
	$(STACK) up
	$(BIN)/gapwatch demo $(DEMO_ARGS)

demo-down:
	@if [ -x $(BIN)/gapwatch ]; then $(BIN)/gapwatch demo --down; fi
	@if [ -f "$(DEMO_STATE)/stack-started-by-demo" ]; then \
	  $(STACK) down && rm -f "$(DEMO_STATE)/stack-started-by-demo"; \
	else echo "demo-down: the stack was running before make demo; left it up"; fi

# The offline installer of the edge agent (docs/edge.md "Offline install"): downloads the cp311
# wheelhouse once (PyPI), then install.sh on the gateway needs no network. EDGE_ARCHS picks.
EDGE_ARCHS ?= aarch64 x86_64
edge-tarball: venv
	PYTHON=$(BIN)/python deploy/edge/build-offline $(EDGE_ARCHS)

clean:
	rm -rf .mypy_cache .ruff_cache .pytest_cache build dist *.egg-info
