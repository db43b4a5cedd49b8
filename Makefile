# peerdistd — two commands: `make run` and `make test`. Only python3 (>= 3.11) and make needed.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint types contracts pytest bench venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -c 'import sys; sys.exit("peerdistd needs Python >= 3.11") if sys.version_info < (3, 11) else None'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

## Start the daemon in the foreground on embedded defaults (state under the per-user XDG dirs).
run: $(STAMP)
	$(BIN)/peerdistd serve $(ARGS)

## Everything CI runs: lint, format check, types, layer contracts, then the test suite.
test: lint types contracts pytest

lint: $(STAMP)
	$(BIN)/ruff check peerdistd tests benchmarks
	$(BIN)/ruff format --check peerdistd tests benchmarks

# tests/ too, with the lighter settings of pyproject.toml's tests.* override.
types: $(STAMP)
	$(BIN)/mypy --strict peerdistd
	$(BIN)/mypy tests

contracts: $(STAMP)
	$(BIN)/lint-imports

# Test files spread over up to 4 worker processes (pytest-xdist; each file stays on one, as
# its fixtures expect): most tests wait on daemons and timers, so even 2 cores gain.
PYTEST_WORKERS ?= $(shell $(PYTHON) -c 'import os; print(min(4, max(2, len(os.sched_getaffinity(0)))))')
pytest: $(STAMP)
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python -m benchmarks $(ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache .hypothesis
