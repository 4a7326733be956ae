# K2 developer entry points. Everything installs into .venv and keeps state under .k2/.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
export K2_HOME ?= $(CURDIR)/.k2
export DAGSTER_HOME ?= $(K2_HOME)/dagster

.PHONY: install demo test test-unit lint dev kafka-start kafka-stop clean bench
.PHONY: demo-prod demo-prod-stop seaweedfs

install: $(VENV)/.installed $(VENV)/.kernels

$(VENV)/.installed: requirements.txt requirements-dev.txt pyproject.toml
	@command -v java >/dev/null || { echo "java is missing: apt-get install -y openjdk-17-jre-headless"; exit 1; }
	@command -v mvn >/dev/null || { echo "mvn is missing: apt-get install -y maven"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -r requirements.txt -r requirements-dev.txt
	$(BIN)/pip install -q --no-deps -e .
	touch $@

# numba's cache of the compiled validation kernels (k2_assets/ticks/warm.py): filled here, so no run compiles.
$(VENV)/.kernels: $(VENV)/.installed k2_assets/ticks/kernels.py
	$(BIN)/python -m k2_assets.ticks.warm
	touch $@

## Start Kafka, produce a deterministic ASX session, run every asset once, print counts and bars.
demo: install
	$(BIN)/python -m k2.demo

## The production profile on local services (README "Production profile"): PostgreSQL catalog + Dagster storage,
## S3 warehouse (SeaweedFS if `make seaweedfs` built it, else moto), Kafka, schema registry. State under .k2/prod.
PROD_HOME := $(K2_HOME)/prod
PROD_ENV := K2_ENV=prod K2_HOME=$(PROD_HOME) DAGSTER_HOME=$(PROD_HOME)/dagster \
	K2_CATALOG_URI=postgresql+psycopg2://k2:k2@127.0.0.1:15432/k2_catalog \
	K2_DAGSTER_PG_URL=postgresql+psycopg2://k2:k2@127.0.0.1:15432/k2_dagster \
	K2_WAREHOUSE=s3://warehouse/lake K2_S3_ENDPOINT=http://127.0.0.1:18333 \
	K2_S3_ACCESS_KEY_ID=k2-access K2_S3_SECRET_ACCESS_KEY=k2-secret-key-for-local-tests \
	K2_KAFKA_PORT=19192 K2_KAFKA_BOOTSTRAP=127.0.0.1:19192 K2_TICK_TOPIC=market.ticks.asx.prod \
	K2_SCHEMA_REGISTRY_URL=http://127.0.0.1:18081/apis/ccompat/v7

demo-prod: install
	$(PROD_ENV) $(BIN)/python -m k2.demo_prod

demo-prod-stop: install
	$(PROD_ENV) $(BIN)/python -m k2.demo_prod stop

## Build SeaweedFS (S3 server, Apache-2.0) from the Go module proxy into ~/.cache/k2 (~13 min on 2 cores, once).
seaweedfs:
	infra/s3/build-seaweedfs

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
