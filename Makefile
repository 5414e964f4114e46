# The README's two commands: `make run` (the product locally) and `make test` (everything CI checks).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test install lint typecheck pytest clean

# Extra options for `devhost run`, e.g. `make run ARGS='--latency azure'` (Azure-like latencies).
ARGS ?=

run: install
	$(BIN)/python -m devhost run $(ARGS)

test: install lint typecheck pytest

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

# The test session starts Azurite in memory on free ports (tests/conftest.py) and stops it however
# the run ends (the child dies with its parent, see devhost/azurite.py).
pytest:
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) node_modules .pytest_cache .mypy_cache .ruff_cache
