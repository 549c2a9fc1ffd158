# The front door: each target is a thin call of the real tool.
# Works on a fresh clone with only Python 3.11+ and make installed: pip installs
# uv into the venv (the version and hashes uv.lock lists for it), and uv installs
# exactly what uv.lock lists, every file checked against its hash.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
UV := $(BIN)/uv
# uv works on $(VENV) with the interpreter it holds, and never downloads one.
UV_ENV := UV_PROJECT_ENVIRONMENT=$(VENV) UV_PYTHON_DOWNLOADS=never
# --locked: fail, rather than resolve afresh, when uv.lock disagrees with pyproject.toml.
SYNC := $(UV_ENV) $(UV) sync --locked --all-extras
PYTEST_ARGS ?=
LOCK_ARGS ?=
SBOM ?= build/sbom.cdx.json

.DEFAULT_GOAL := help
.PHONY: help venv lock sbom image run test lint typecheck pytest bench stack fuzz soak audit rename clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | column -t -s "$$(printf '\t')"

# The installer first, from the lock's hashes (pip checks them). Later syncs
# keep it at the locked version: uv is one of the dev tools.
$(UV):
	$(PYTHON) -m venv $(VENV)
	$(PYTHON) scripts/uv_requirement.py uv.lock > $(VENV)/uv-requirement.txt
	$(BIN)/python -m pip install --quiet --require-hashes --no-deps -r $(VENV)/uv-requirement.txt

# Reinstall only when the dependency files changed. The sync installs the lock
# exactly (the project editable, with its extras) and removes anything else.
$(STAMP): pyproject.toml uv.lock | $(UV)
	@$(UV_ENV) $(UV) lock --check --quiet || { \
	  echo "uv.lock does not match pyproject.toml: run make lock" >&2; exit 1; }
	$(SYNC)
	@touch $(STAMP)

venv: $(STAMP)  ## create .venv and install the project with its dev tools, from uv.lock

lock: | $(UV)  ## rewrite uv.lock after a dependency change in pyproject.toml (LOCK_ARGS=--upgrade: newest allowed)
	$(UV_ENV) $(UV) lock $(LOCK_ARGS)

sbom: | $(UV)  ## CycloneDX SBOM of what the image installs (from uv.lock) into build/sbom.cdx.json (SBOM=path)
	@mkdir -p $(dir $(SBOM))
	$(UV_ENV) $(UV) export --locked --quiet --format cyclonedx1.5 --no-dev --no-editable \
	  --output-file $(SBOM)

IMAGE ?= service:local
SOURCE ?=
image:  ## docker build (BuildKit) with the OCI labels: version (pyproject.toml), revision (git), SOURCE=<repo URL>
	DOCKER_BUILDKIT=1 docker build --tag $(IMAGE) \
	  --build-arg VERSION="$$($(PYTHON) -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')" \
	  --build-arg REVISION="$$(git rev-parse HEAD)" \
	  $(if $(SOURCE),--build-arg SOURCE="$(SOURCE)") .

run: $(STAMP)  ## start the downstream stubs and the service on the embedded defaults
	$(BIN)/python scripts/run_local.py

lint: $(STAMP)  ## ruff (lint and format check), the import contracts, zizmor on the workflows, uv.lock up to date
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/zizmor --offline --quiet .
	$(UV_ENV) $(UV) lock --check --quiet

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
	$(SYNC) --group fuzz
	mkdir -p data/fuzz-corpus
	$(BIN)/python fuzz/fuzz_events.py data/fuzz-corpus fuzz/corpus -max_total_time=$(FUZZ_SECONDS)
	SCHEMATHESIS_MAX_EXAMPLES=500 $(BIN)/pytest tests/test_openapi.py tests/test_fuzz_parsers.py

SOAK_SECONDS ?= 600
soak: $(STAMP)  ## mixed load at ~70% of capacity with 1% faults for SOAK_SECONDS; fails on leaks, 5xx, loss
	$(BIN)/python scripts/soak.py --duration $(SOAK_SECONDS) $(SOAK_ARGS)

audit: $(STAMP)  ## pip-audit of every version uv.lock pins (needs its vulnerability service)
	$(SYNC) --group audit
	$(UV_ENV) $(UV) export --locked --quiet --all-extras --all-groups --no-emit-project \
	  --format requirements.txt --output-file $(VENV)/audit-requirements.txt
	$(BIN)/pip-audit --strict --disable-pip --require-hashes -r $(VENV)/audit-requirements.txt

clean:  ## remove the venv and caches
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache data build
