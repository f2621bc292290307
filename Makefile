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

.PHONY: setup browser run lint test bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP) browser

# Headless Chromium and its driver for the editor test (tests/test_ls_browser.py): Debian's
# packages, installed when missing if apt-get is there and we are root. Never fails: without
# a browser that test skips, with its reason.
browser:
	@if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then \
	    :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    echo "browser: installing chromium and chromium-driver with apt-get"; \
	    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	        --no-install-recommends chromium chromium-driver; } \
	    || echo "browser: could not install them; tests/test_ls_browser.py will skip"; \
	else \
	    echo "browser: no chromium/chromedriver and no apt-get as root to install them;" \
	        "tests/test_ls_browser.py will skip"; \
	fi

run: $(STAMP)
	$(BIN)/promptmoe serve --host $(HOST) --port $(PORT)

# Style (ruff, 100 columns) and the layer contract (import-linter, see pyproject.toml).
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports

test: lint browser
	$(BIN)/pytest

bench: $(STAMP)
	$(BIN)/promptmoe bench engine --json bench-results/engine.json

clean:
	rm -rf $(VENV) build *.egg-info
