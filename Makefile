# Two commands on a fresh machine with only Python >= 3.11: `make demo`, `make test`.
# Each creates .venv and installs what it needs on first use.

PYTHON_BOOT := $(shell for p in python3.13 python3.12 python3.11 python3; do \
	$$p -c 'import sys; assert sys.version_info >= (3, 11)' >/dev/null 2>&1 && { echo $$p; break; }; done)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=
# e.g. BENCH_ARGS="--against 7703c68 sync" for before/after figures in one run
BENCH_ARGS ?=
# `make demo DEMO_ARGS=--once` runs the scenario and stops (CI); `--keep`, `--port N` too.
DEMO_ARGS ?=

.PHONY: install demo test test-fast bench clean

$(STAMP): pyproject.toml
	@test -n "$(PYTHON_BOOT)" || { echo "Python >= 3.11 is needed"; exit 1; }
	$(PYTHON_BOOT) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip >/dev/null 2>&1 || true
	$(PY) -m pip install -q -e '.[test]'
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m workers.demo $(DEMO_ARGS)

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .concord .pytest_cache .hypothesis
