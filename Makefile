# One target per habit. `make run` and `make test` do all set-up on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION := 20
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: setup run test test-fast lint format synth chaos bench docs docs-check clean

# The virtualenv is (re)built when missing or when a pinned requirements file changed.
$(BIN)/.installed: requirements.txt requirements-dev.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip==25.3"
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	@touch $@

# checkov in a virtualenv of its own (its pins conflict with ours: requirements-checkov.txt says
# which); the infra tests run .venv-checkov/bin/checkov on the synthesized cloud templates.
CHECKOV_VENV := .venv-checkov
$(CHECKOV_VENV)/.installed: requirements-checkov.txt
	@test -x $(CHECKOV_VENV)/bin/python || $(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install --quiet --upgrade "pip==25.3"
	$(CHECKOV_VENV)/bin/python -m pip install --quiet -r requirements-checkov.txt
	$(CHECKOV_VENV)/bin/python -m pip check
	@touch $@

# The pinned CDK CLI (aws-cdk@2), used to deploy the local stage into the emulator.
node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	@touch $@

setup: $(BIN)/.installed $(CHECKOV_VENV)/.installed node_modules/.installed

run: setup
	$(BIN)/microprocess demo

# Two passes: everything in parallel, then the suites that start a real local stack, one
# at a time (two stacks at once on 2 cores make them flaky).
test: setup
	$(BIN)/python -m pytest -p no:cacheprovider -n 2 -m "not e2e"
	$(BIN)/python -m pytest -p no:cacheprovider -m e2e

test-fast: setup
	$(BIN)/python -m pytest -p no:cacheprovider -m "not e2e and not infra" -n 2

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

synth: setup
	$(BIN)/python app.py

chaos: setup
	$(BIN)/python -m microprocess.chaos --size full

bench: setup
	$(BIN)/python -m bench.run

# The README's CLI table, regenerated from the commands themselves.
docs: setup
	$(BIN)/python -m microprocess.cli.reference README.md
	$(BIN)/python -m microprocess.declarations.reference docs/declarations.md

# The README's runnable blocks, in order, in a scratch copy of the project (a few minutes).
docs-check: setup
	$(BIN)/python -m tests.docs_check README.md

clean:
	rm -rf cdk.out .microprocess out .pytest_cache
