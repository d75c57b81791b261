# Two commands do all set-up on a fresh machine:
#   make demo   — install the package (runtime dependencies only) into .venv and run a whole
#                 migration with no servers
#   make test   — install the dev extras too, make sure Postgres and Redis run and Chromium and
#                 docker-compose are there (apt-get as root when missing), run the whole suite
PYTHON    ?= python3
VENV      := .venv
BIN       := $(VENV)/bin
STAMP     := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev

.PHONY: demo test unit integration chaos lint typecheck install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# the runtime package: all the demo needs
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $(STAMP)

# the dev extras (pytest, mypy, ruff, the milvus-server engine, ...): tests and checks
$(DEV_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP) $(DEV_STAMP)

install: $(DEV_STAMP)

demo: $(STAMP)
	$(BIN)/backfleet demo

test: $(DEV_STAMP)
	scripts/ensure-services.sh
	scripts/ensure-test-tools.sh
	$(BIN)/pytest -q -p no:cacheprovider tests

unit: $(DEV_STAMP)
	$(BIN)/pytest -q tests/unit

integration: $(DEV_STAMP)
	scripts/ensure-services.sh
	scripts/ensure-test-tools.sh
	$(BIN)/pytest -q tests/integration tests/acceptance

chaos: $(DEV_STAMP)
	scripts/ensure-services.sh
	$(BIN)/pytest -q tests/chaos

lint: $(DEV_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(DEV_STAMP)
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
