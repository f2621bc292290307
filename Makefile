# Two commands a newcomer needs:  make run   (set up, then serve the backend)
#                                 make test  (set up, then run the tests)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
HOST ?= 0.0.0.0
PORT ?= 9090
# OpenMP threads sleep instead of spinning when idle: much faster on a shared CPU.
export OMP_WAIT_POLICY ?= PASSIVE
# Two malloc arenas: threads serving requests reuse memory instead of growing the RSS
# (the Docker image sets the same).
export MALLOC_ARENA_MAX ?= 2

.PHONY: setup run lint test bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	$(BIN)/promptmoe serve --host $(HOST) --port $(PORT)

# Style (ruff, 100 columns) and the layer contract (import-linter, see pyproject.toml).
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports

test: lint
	$(BIN)/pytest

bench: $(STAMP)
	$(BIN)/promptmoe bench engine --json bench-results/engine.json

clean:
	rm -rf $(VENV) build *.egg-info
