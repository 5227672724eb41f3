# meshd: every target creates and uses .venv/ in the repo root.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BENCH_ARGS ?=
PYTEST_ARGS ?=
TEST_WORKERS ?= 4

# Exact versions of every runtime and dev dependency (pip-compile output); `make lock` rewrites it.
LOCK := requirements/dev.lock
LOCK_VENV := .venv-lock
PIP_TOOLS := pip-tools==7.7.0
LOCK_ARGS ?=

.PHONY: demo test lint bench proto setup system-deps clean lock docs

$(VENV)/.installed: pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r $(LOCK)
	$(PY) -m pip install -q --no-deps -e .
	touch $@

## make lock: re-resolve $(LOCK) from pyproject.toml (runtime + dev extras) with pip-compile, in a venv of
## its own; pins already in the lock are kept: LOCK_ARGS=--upgrade (or --upgrade-package NAME) moves them
lock:
	test -x $(LOCK_VENV)/bin/pip-compile || { $(PYTHON) -m venv $(LOCK_VENV) && $(LOCK_VENV)/bin/pip install -q $(PIP_TOOLS); }
	CUSTOM_COMPILE_COMMAND="make lock" $(LOCK_VENV)/bin/pip-compile -q --extra dev --strip-extras --allow-unsafe \
		--no-emit-index-url --no-emit-find-links $(LOCK_ARGS) -o $(LOCK) pyproject.toml

setup: $(VENV)/.installed system-deps

## make system-deps: system tools the tests use (iptables for the netns capture tests), when installable
system-deps:
	@sh tools/system-deps.sh

## make demo: meshd standalone on examples/, real Envoy sidecars, live traffic table, a canary shift
demo: setup
	$(PY) -m meshd demo

## make test: lint, then every test (unit, golden, real-Envoy end-to-end); with ../shared/envtest present,
## KUBEBUILDER_ASSETS names its unpacked copy (tools/envtest-assets.sh) and the real-API-server tests run.
## The tests run on TEST_WORKERS pytest-xdist workers, a test file per worker at a time (--dist loadfile: a
## module's fixtures stay in one process); most e2e time is waiting on processes, so more workers than cores
## pays. TEST_WORKERS=0 runs them in this one process.
test: setup lint
	KUBEBUILDER_ASSETS="$${KUBEBUILDER_ASSETS:-$$(sh tools/envtest-assets.sh)}" $(PY) -m pytest -q \
		-n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks tools
	$(VENV)/bin/mypy src
	$(VENV)/bin/lint-imports

bench: setup
	$(PY) -m benchmarks $(BENCH_ARGS)

## make docs: the documentation site (mkdocs, docs/) into site/; fails on a broken link or a stale support table
docs: setup
	$(PY) tools/gensupport.py --check
	$(VENV)/bin/mkdocs build --strict -q

proto: setup
	rm -rf src/meshd/_gen
	$(PY) tools/genproto.py src/meshd/_gen

clean:
	rm -rf $(VENV) $(LOCK_VENV) .pytest_cache .mypy_cache .ruff_cache site
