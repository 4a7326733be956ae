# K2 developer entry points. Everything installs into .venv and keeps state under .k2/.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
export K2_HOME ?= $(CURDIR)/.k2
export DAGSTER_HOME ?= $(K2_HOME)/dagster

.PHONY: install demo test test-unit lint dev kafka-start kafka-stop clean bench

install: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-dev.txt pyproject.toml
	@command -v java >/dev/null || { echo "java is missing: apt-get install -y openjdk-17-jre-headless"; exit 1; }
	@command -v mvn >/dev/null || { echo "mvn is missing: apt-get install -y maven"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -r requirements.txt -r requirements-dev.txt
	$(BIN)/pip install -q --no-deps -e .
	touch $@

## Start Kafka, produce a deterministic ASX session, run every asset once, print counts and bars.
demo: install
	$(BIN)/python -m k2.demo

## The whole test suite: unit, integration (real broker via one fixture) and chaos.
test: install
	$(BIN)/pytest -q

test-unit: install
	$(BIN)/pytest -q tests/unit

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy k2 k2_assets k2_resources

## The Dagster UI on http://127.0.0.1:3000 with the asset graph, sensor and checks.
dev: install
	mkdir -p $(DAGSTER_HOME) && cp -n dagster.yaml $(DAGSTER_HOME)/dagster.yaml || true
	$(BIN)/k2 kafka start
	$(BIN)/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

kafka-start: install
	$(BIN)/k2 kafka start

kafka-stop: install
	$(BIN)/k2 kafka stop

bench: install
	$(BIN)/python benchmarks/ingest.py

clean:
	-$(BIN)/k2 kafka stop
	rm -rf .k2
