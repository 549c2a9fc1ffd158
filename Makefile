# The front door: each target is a thin call of the real tool.
# Works on a fresh clone with only Python 3.11+ and make installed.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help venv run test lint typecheck pytest bench stack fuzz soak audit rename clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | column -t -s "$$(printf '\t')"

# Reinstall only when the project's metadata changed.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)  ## create .venv and install the project with its dev tools

run: $(STAMP)  ## start the downstream stubs and the service on the embedded defaults
	$(BIN)/python scripts/run_local.py

lint: $(STAMP)  ## ruff (lint and format check), and the import contracts (lint-imports)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: $(STAMP)  ## mypy --strict on service/
	$(BIN)/mypy

pytest: $(STAMP)  ## the test suite only
	$(BIN)/pytest $(PYTEST_ARGS)

test: lint typecheck pytest  ## ruff, mypy strict and the whole test suite

bench: $(STAMP)  ## benchmarks against peer baselines in the same run (needs wrk)
	$(BIN)/python bench/run.py $(BENCH_ARGS)

stack: $(STAMP)  ## stubs, the service and a real Prometheus with the alert rules (needs prometheus); Ctrl-C stops all
	$(BIN)/python scripts/stack.py $(STACK_ARGS)

rename: $(STAMP)  ## rename the package, script, metric/env prefixes and compose services: make rename NAME=orders_api
	@test -n "$(NAME)" || (echo "usage: make rename NAME=your_service" >&2; exit 2)
	$(BIN)/python scripts/rename.py $(NAME)
	$(BIN)/ruff check --select I --fix --quiet .
	$(BIN)/ruff format --quiet .

FUZZ_SECONDS ?= 300
fuzz: $(STAMP)  ## atheris on the event parsers (FUZZ_SECONDS) and a long schemathesis run
	$(BIN)/python -m pip install --quiet 'atheris>=2.3,<4'
	mkdir -p data/fuzz-corpus
	$(BIN)/python fuzz/fuzz_events.py data/fuzz-corpus fuzz/corpus -max_total_time=$(FUZZ_SECONDS)
	SCHEMATHESIS_MAX_EXAMPLES=500 $(BIN)/pytest tests/test_openapi.py tests/test_fuzz_parsers.py

SOAK_SECONDS ?= 600
soak: $(STAMP)  ## mixed load at ~70% of capacity with 1% faults for SOAK_SECONDS; fails on leaks, 5xx, loss
	$(BIN)/python scripts/soak.py --duration $(SOAK_SECONDS) $(SOAK_ARGS)

audit: $(STAMP)  ## pip-audit of the installed dependencies (needs its vulnerability service)
	$(BIN)/python -m pip install --quiet -e '.[audit]'
	$(BIN)/pip-audit --skip-editable

clean:  ## remove the venv and caches
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache data
