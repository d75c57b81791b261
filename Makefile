# Two commands do all set-up on a fresh machine:
#   make demo   — install into .venv and run a whole migration with no servers
#   make test   — install dev extras, make sure Postgres and Redis run, run the whole suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test unit integration chaos lint typecheck install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/backfleet demo

test: $(STAMP)
	scripts/ensure-services.sh
	scripts/ensure-test-tools.sh
	$(BIN)/pytest -q -p no:cacheprovider tests

unit: $(STAMP)
	$(BIN)/pytest -q tests/unit

integration: $(STAMP)
	scripts/ensure-services.sh
	scripts/ensure-test-tools.sh
	$(BIN)/pytest -q tests/integration tests/acceptance

chaos: $(STAMP)
	scripts/ensure-services.sh
	$(BIN)/pytest -q tests/chaos

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
