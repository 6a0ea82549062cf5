# orderstream: every command the README mentions. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The integration tests wait mostly on Kafka and PostgreSQL, so pytest-xdist runs them
# side by side, TEST_WORKERS at a time (0: one at a time). 3 on the 2-core machine: 2
# were slower; 4 were faster once but leave the tests' deadlines less CPU on 2 cores.
# Tests marked `serial` (timing- or takeover-sensitive) run alone, after the others.
TEST_WORKERS ?= 3
PYTEST_PARALLEL := $(BIN)/pytest -n $(TEST_WORKERS) --dist loadgroup -m "not serial"
PYTEST_SERIAL := $(BIN)/pytest -m serial

.PHONY: help install stack-up stack-down run test test-unit test-integration lint compose-check bench bench-quick bench-http bench-settle bench-restore faults clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-17s %s\n", $$1, $$2}'

install: $(STAMP) ## create .venv and install orderstream with its pinned dev tools

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	@touch $(STAMP)

stack-up: install ## start Kafka (KRaft) and PostgreSQL locally, create topics, migrate
	bash scripts/stack.sh up
	$(BIN)/orderstream topics create
	$(BIN)/orderstream db migrate
	@echo "--- effective settings (override with ORDERSTREAM_* variables):"
	@$(BIN)/orderstream settings

stack-down: ## stop the local Kafka and PostgreSQL (data kept under .stack/)
	bash scripts/stack.sh down

run: stack-up ## install, start the stack, run worker + sink + status service on :8080
	$(BIN)/orderstream run

test: stack-up lint ## lint, unit tests, integration tests on the real stack (TEST_WORKERS at once)
	ORDERSTREAM_REQUIRE_STACK=1 $(PYTEST_PARALLEL)
	ORDERSTREAM_REQUIRE_STACK=1 $(PYTEST_SERIAL) tests/integration

test-unit: install ## unit tests only (no stack needed)
	$(BIN)/pytest tests/unit

test-integration: stack-up ## integration tests only (TEST_WORKERS at once, then the serial ones)
	ORDERSTREAM_REQUIRE_STACK=1 $(PYTEST_PARALLEL) tests/integration
	ORDERSTREAM_REQUIRE_STACK=1 $(PYTEST_SERIAL) tests/integration

lint: install ## ruff check, ruff format --check, mypy --strict on src/
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

compose-check: ## validate docker-compose.yml (needs Debian's docker-compose)
	docker-compose config -q

bench: stack-up ## full benchmark: orderstream vs row lock, Redis Lua, group commit, settle (~16 min)
	$(BIN)/python -m bench.run
	$(BIN)/python -m bench.settle --output bench/results/settle.json
	$(BIN)/python -m bench.settle --instant --output bench/results/settle-instant.json

bench-quick: stack-up ## the same benchmark with small counts (about two minutes)
	$(BIN)/python -m bench.run --quick

bench-http: stack-up ## POST /orders: orderstream's door vs an aiohttp + row-lock service, and vs its own producer rate (~10 min; needs wrk: apt-get install wrk)
	$(BIN)/python -m bench.http_bench

faults: stack-up ## fault matrix, the lifecycle on: kill -9, failover, broker and PostgreSQL down, storms, replay (~21 min)
	$(BIN)/python -m bench.faults

bench-settle: stack-up ## a 10,000-unit sale timed to every order's final state (~1 min)
	$(BIN)/python -m bench.settle
	$(BIN)/python -m bench.settle --instant

bench-restore: stack-up ## restore and kill -9 failover after sales of 100k and 1M requests (~6 min)
	$(BIN)/python -m bench.restore
	$(BIN)/python -m bench.restore --worker-id bench-worker

clean: ## remove caches and the worker's local table cache (not the stack)
	rm -rf .orderstream-data .pytest_cache .mypy_cache .ruff_cache
