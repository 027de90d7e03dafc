# The same commands run locally and in CI (.ci/run calls `make test`).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test check lint typecheck docs bytecode unit integration full chaos bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

# The dev tools are the `dev` dependency group of pyproject.toml (`--group` needs pip 25.1).
$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[all]' --group dev
	touch $@ $(VENV)/.installed

## demo: set up .venv and run the walkthrough on the embedded SQLite broker
demo: $(VENV)/.installed
	cd examples/demo && ../../$(BIN)/python run_demo.py

## test: set up .venv with the dev tools, lint, type-check and run the whole suite
## (the default profile: a path that is the same on every broker, pool or prefetch runs
## on one of them; `make full` runs the others too)
test: check bytecode
	$(BIN)/pytest -q

# Every worker a test starts imports celeriac afresh; where PYTHONDONTWRITEBYTECODE is
# set nothing caches the compiled modules, and each start recompiles them (0.15 s of a
# 0.48 s start). Compiled once here (only what changed), they are read, not rebuilt.
bytecode: $(VENV)/.installed-dev
	$(BIN)/python -m compileall -q src tests

check: lint typecheck docs

# Everything with Python in it.
LINTED := src tests examples benchmarks

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)

typecheck: $(VENV)/.installed-dev
	$(BIN)/mypy
	$(BIN)/mypy --config-file tests/typing/mypy.ini tests/typing

## docs: build the docs site into site/ (mkdocs.yml), every warning an error
docs: $(VENV)/.installed-dev
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

unit: bytecode
	$(BIN)/pytest -q tests/unit tests/contract

integration: bytecode
	$(BIN)/pytest -q tests/integration

## full: the whole suite with the parameters marked `full` (TEST_PROFILE=full): the same
## paths on the other brokers, pools and prefetch values; the chaos suite in its small profile
full: bytecode
	TEST_PROFILE=full $(BIN)/pytest -q

## chaos: the reliability suite (tests/chaos) in its full profile; CI runs the small one
chaos: bytecode
	CHAOS_PROFILE=full TEST_PROFILE=full $(BIN)/pytest -q -m chaos tests/chaos

## bench: run the comparison with Celery (benchmarks/README.md); pass options in BENCH_ARGS,
## e.g. make bench BENCH_ARGS="--scenario s2 --broker redis --contestant celeriac,celery"
bench: $(VENV)/.installed-dev
	$(BIN)/python -m benchmarks $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache build dist site
