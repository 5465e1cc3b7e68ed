# One target per habit. `make run` and `make test` do all set-up on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION := 20
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: setup checkov run test test-fast lint format synth chaos bench docs docs-check clean chromium console-assets console-shots

# The virtualenv is (re)built when missing or when a pinned requirements file changed.
$(BIN)/.installed: requirements.txt requirements-dev.txt pyproject.toml setup.py
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip==25.3"
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	@touch $@

# checkov in a virtualenv of its own (its pins conflict with ours: requirements-checkov.txt says
# which); the infra tests run .venv-checkov/bin/checkov on the synthesized cloud templates. Built by
# `make test` (or `make checkov`) only: a user of the platform never needs it.
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

# What a user needs: the CLI, the local stack, the CDK app and the CDK CLI.
setup: $(BIN)/.installed node_modules/.installed

checkov: $(CHECKOV_VENV)/.installed

run: setup
	$(BIN)/microprocess demo

# Debian's Chromium, which the console's browser test drives (headless, through Playwright's
# executable_path: no browser is downloaded). Installed only when missing; apt needs root.
chromium:
	@test -x /usr/bin/chromium || { \
	  if [ "$$(id -u)" != 0 ]; then echo "make chromium: /usr/bin/chromium is missing; as root: apt-get install -y chromium chromium-driver" >&2; exit 1; fi; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; }

# The console's browser libraries, from the npm registry (versions pinned in package.json), copied
# into the package with their licences (committed: the console works offline, no CDN).
console-assets: node_modules/.installed
	cp node_modules/htmx.org/dist/htmx.min.js microprocess/console/static/vendor/htmx.min.js
	cp node_modules/htmx.org/LICENSE microprocess/console/static/vendor/htmx.LICENSE
	cp node_modules/uplot/dist/uPlot.iife.min.js node_modules/uplot/dist/uPlot.min.css microprocess/console/static/vendor/
	cp node_modules/uplot/LICENSE microprocess/console/static/vendor/uPlot.LICENSE

# Screenshots of a run page mid-run and at its end (docs/console-run-*.png, shown in the README),
# taken by the console's browser test on a local stack.
console-shots: setup chromium
	MICROPROCESS_CONSOLE_SHOTS=docs $(BIN)/python -m pytest -p no:cacheprovider -m e2e tests/test_local_e2e_console.py

# Three passes: everything but the local stacks in parallel; then the suites that start a
# real local stack, two modules at a time (each module its own stack and work folder), all
# recording their AWS calls in one folder; last, the check of that record against the cloud
# roles (tests/test_local_e2e_calls.py), alone, once every call is in.
test: setup checkov chromium
	$(BIN)/python -m pytest -p no:cacheprovider -n 2 -m "not e2e"
	export MICROPROCESS_AWS_CALL_LOG="$$(mktemp -d)" && \
	$(BIN)/python -m pytest -p no:cacheprovider -n 2 --dist loadfile -m "e2e and not aws_calls" && \
	$(BIN)/python -m pytest -p no:cacheprovider -m "e2e and aws_calls"

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
	$(BIN)/python -m bench.console_pages --out bench/results/console-pages.json

# The README's CLI table, regenerated from the commands themselves.
docs: setup
	$(BIN)/python -m microprocess.cli.reference README.md
	$(BIN)/python -m microprocess.declarations.reference docs/declarations.md

# The README's runnable blocks, in order, in a scratch copy of the project (a few minutes).
docs-check: setup
	$(BIN)/python -m tests.docs_check README.md

clean:
	rm -rf cdk.out .microprocess out .pytest_cache
