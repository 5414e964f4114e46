# The README's two commands: `make run` (the product locally) and `make test` (everything CI checks).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run demo test install lint typecheck infra-check pytest package clean

# Extra options for `devhost run`, e.g. `make run ARGS='--latency azure'` (Azure-like latencies).
ARGS ?=

run: install
	$(BIN)/python -m devhost run $(ARGS)

# The product shown end to end (see `python -m devhost demo --help`), e.g.
# `make demo DEMO_ARGS='--tenants 1 --users 50'`; the CSV and the chart go to demo-output/.
DEMO_ARGS ?=

demo: install
	$(BIN)/python -m devhost demo $(DEMO_ARGS)

test: install lint typecheck infra-check pytest

install: $(VENV)/.installed node_modules/.installed

$(VENV)/.installed: requirements.txt requirements-dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	touch $@

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund
	touch $@

lint:
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck:
	$(BIN)/mypy

# Checkov's Bicep framework over infra/ (the Bicep compiler is not needed). Its own venv: checkov pins many
# packages the app's venv also uses. Every skipped check carries its reason in a `checkov:skip` comment.
CHECKOV_VENV := .venv-checkov
infra-check: $(CHECKOV_VENV)/.installed
	$(CHECKOV_VENV)/bin/checkov --directory infra --framework bicep --compact --quiet --skip-download

$(CHECKOV_VENV)/.installed: requirements-infra.txt
	test -x $(CHECKOV_VENV)/bin/python || $(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(CHECKOV_VENV)/bin/python -m pip install --quiet -r requirements-infra.txt
	touch $@

# The test session starts Azurite in memory on free ports (tests/conftest.py) and stops it however
# the run ends (the child dies with its parent, see devhost/azurite.py).
pytest:
	$(BIN)/python -m pytest

# The Teams app package with the bot's app id filled in: BOT_APP_ID=<client id> make package
# (optional TEAMS_APP_ID, APP_HOSTNAME); writes appPackage/build/appPackage.zip.
package:
	$(PYTHON) appPackage/make_package.py

clean:
	rm -rf $(VENV) $(CHECKOV_VENV) node_modules .pytest_cache .mypy_cache .ruff_cache
