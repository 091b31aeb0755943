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

.PHONY: help venv lint format test stack-up stack-down stack-status demo clean

help:
	@echo "make venv        create .venv and install gapwatch[all] (re-runs when pyproject.toml changes)"
	@echo "make lint        ruff check, ruff format --check, mypy --strict, lint-imports"
	@echo "make format      ruff format + ruff check --fix"
	@echo "make test        start the local stack if needed, lint, run pytest against real services"
	@echo "make stack-up    deploy/local/stack up    (Mosquitto, Kafka, InfluxDB on loopback)"
	@echo "make stack-down  deploy/local/stack down"
	@echo "make demo        the end-to-end demo (arrives with issue #6)"

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

# TODO(issue #6): run the end-to-end demo (simulated devices -> agent -> Kafka -> sink -> InfluxDB).
demo:
	@echo "make demo: the end-to-end demo is built in issue #6; nothing to run yet."

clean:
	rm -rf .mypy_cache .ruff_cache .pytest_cache build dist *.egg-info
