# meshd: every target creates and uses .venv/ in the repo root.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BENCH_ARGS ?=
PYTEST_ARGS ?=

.PHONY: demo test lint bench proto setup system-deps clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

setup: $(VENV)/.installed system-deps

## make system-deps: system tools the tests use (iptables for the netns capture tests), when installable
system-deps:
	@sh tools/system-deps.sh

## make demo: meshd standalone on examples/, real Envoy sidecars, live traffic table, a canary shift
demo: setup
	$(PY) -m meshd demo

## make test: lint, then every test (unit, golden, real-Envoy end-to-end)
test: setup lint
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks tools
	$(VENV)/bin/mypy src
	$(VENV)/bin/lint-imports

bench: setup
	$(PY) -m benchmarks $(BENCH_ARGS)

proto: setup
	rm -rf src/meshd/_gen
	$(PY) tools/genproto.py src/meshd/_gen

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
