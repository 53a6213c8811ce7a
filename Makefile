# Two set-up commands for a fresh machine with Python 3.11+: `make demo` and `make test`.
# Both create .venv and install on first use; later runs reuse it (the stamp file tracks
# pyproject.toml and constraints.txt, so a changed dependency list or lock reinstalls). A venv
# left half-made by a failed first run (no pip in it) is made again. Every install takes the exact
# versions in constraints.txt, the ones the tests passed with; `make lock` refreshes them.

PYTHON ?= $(shell for p in python3.13 python3.12 python3.11 python3; do \
	command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null \
	&& echo $$p && break; done)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONSTRAINTS := constraints.txt

.PHONY: demo test lint format install clean bench lock

$(STAMP): pyproject.toml $(CONSTRAINTS)
	@test -n "$(PYTHON)" || { echo "Python 3.11 or newer is required" >&2; exit 1; }
	@$(BIN)/python -m pip --version >/dev/null 2>&1 || { rm -rf $(VENV) && $(PYTHON) -m venv $(VENV); }
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c $(CONSTRAINTS) -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

# Refreshes constraints.txt on purpose: the newest versions pyproject.toml allows, installed
# without constraints in a throwaway venv and frozen. Then run `make lint test` and commit it.
lock:
	@test -n "$(PYTHON)" || { echo "Python 3.11 or newer is required" >&2; exit 1; }
	@set -e; lock_venv=$$(mktemp -d); trap 'rm -rf "$$lock_venv"' EXIT; \
	$(PYTHON) -m venv "$$lock_venv"; \
	"$$lock_venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip; \
	"$$lock_venv/bin/python" -m pip install --quiet --disable-pip-version-check -e '.[dev]'; \
	{ \
		echo "# Exact versions of every package strangler[dev] installs, the ones the tests passed"; \
		echo "# with: make, .ci/run (through make) and the Dockerfile install with -c $(CONSTRAINTS)."; \
		echo "# Written by make lock with $$("$$lock_venv/bin/python" -V); to refresh: make lock,"; \
		echo "# then make lint test, then commit."; \
		"$$lock_venv/bin/python" -m pip freeze --exclude-editable; \
	} > "$$lock_venv/$(CONSTRAINTS)"; \
	mv "$$lock_venv/$(CONSTRAINTS)" $(CONSTRAINTS)
	@echo "$(CONSTRAINTS) refreshed: run make lint test, then commit it"

demo: $(STAMP)
	$(BIN)/strangler demo

test: $(STAMP)
	$(BIN)/python -m pytest --cov --cov-report=term $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python -m bench.match_cost
	$(BIN)/python -m bench.run $(BENCH_ARGS)

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache .hypothesis
