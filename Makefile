# Two commands on a fresh machine with only Python >= 3.11: `make demo`, `make test`.
# Each creates .venv and installs what it needs on first use.

PYTHON_BOOT := $(shell for p in python3.13 python3.12 python3.11 python3; do \
	$$p -c 'import sys; assert sys.version_info >= (3, 11)' >/dev/null 2>&1 && { echo $$p; break; }; done)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=
# test processes (pytest-xdist); each starts its own Temporal dev server and databases
PYTEST_WORKERS ?= 2
# e.g. BENCH_ARGS="--against 7703c68 sync" for before/after figures in one run
BENCH_ARGS ?=
# `make demo DEMO_ARGS=--once` runs the scenario and stops (CI); `--keep`, `--port N` too.
DEMO_ARGS ?=

.PHONY: install demo test test-fast bench clean lock

# The versions CI and the image use: requirements-test.lock pins every package (a
# dependency added to pyproject.toml since the last `make lock` still resolves, unpinned).
$(STAMP): pyproject.toml requirements-test.lock
	@test -n "$(PYTHON_BOOT)" || { echo "Python >= 3.11 is needed"; exit 1; }
	$(PYTHON_BOOT) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip >/dev/null 2>&1 || true
	$(PY) -m pip install -q -c requirements-test.lock -e '.[test,otlp]'
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m workers.demo $(DEMO_ARGS)

test: $(STAMP)
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .concord .pytest_cache .hypothesis

# Re-pin after changing dependencies in pyproject.toml: requirements.lock is the runtime
# (the image, with the otlp extra), requirements-test.lock adds the test extra (CI, make install).
PIP_COMPILE_ARGS := -q --strip-extras --no-emit-index-url --no-emit-find-links
# The image's Python (Dockerfile: python:3.11-slim): markers resolve for it.
LOCK_PYTHON ?= python3.11
lock:
	$(LOCK_PYTHON) -m venv .venv-lock
	.venv-lock/bin/python -m pip install -q pip-tools
	.venv-lock/bin/pip-compile $(PIP_COMPILE_ARGS) --extra otlp -o requirements.lock pyproject.toml
	.venv-lock/bin/pip-compile $(PIP_COMPILE_ARGS) --extra otlp --extra test -o requirements-test.lock pyproject.toml
	rm -rf .venv-lock
