# jwt-gateway — every target bootstraps its own .venv (idempotent; quick when already installed).
PYTHON ?= $(shell command -v python3.11 || command -v python3.12 || command -v python3.13 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
RUN_STAMP := $(VENV)/.installed-run
DEV_STAMP := $(VENV)/.installed-dev
PYTEST_ARGS ?=

.PHONY: run test lint typecheck unit bench bench-quick clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(RUN_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e .
	@touch $@

$(DEV_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $@ $(RUN_STAMP)

## make run: the demo — gateway, echo upstream and a development issuer on 127.0.0.1
run: $(RUN_STAMP)
	$(BIN)/jwt-gateway demo

## make test: ruff, mypy --strict, pytest (unit + end-to-end with real servers)
test: lint typecheck unit

lint: $(DEV_STAMP)
	$(BIN)/ruff check gateway tests bench
	$(BIN)/ruff format --check gateway tests bench

typecheck: $(DEV_STAMP)
	$(BIN)/mypy --strict gateway

unit: $(DEV_STAMP)
	$(BIN)/pytest -q $(PYTEST_ARGS)

## make bench: proxy benchmark (wrk; nginx, Apache+mod_auth_openidc, naive proxy, gateway) + micro-benchmarks
bench: $(DEV_STAMP)
	bash bench/setup.sh
	$(BIN)/python bench/run_proxy_bench.py
	$(BIN)/python bench/bench_verify.py
	$(BIN)/python bench/bench_pool.py

bench-quick: $(DEV_STAMP)
	bash bench/setup.sh
	$(BIN)/python bench/run_proxy_bench.py --quick

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis bench/.work
