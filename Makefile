# Two entry points for a fresh machine: `make serve` and `make test`.
# Both install exactly what the lock files in requirements/ pin (hash-checked); see
# docs/install.md for how the locks are made and upgraded (`make lock`).
PYTHON  ?= python3
VENV    ?= .venv
BIN      = $(VENV)/bin
RUNTIME_LOCK = requirements/runtime.txt
TEST_LOCK    = requirements/test.txt
# BROWSER=0 skips the browser tests, and with them the Chromium install.
BROWSER ?= 1
PIP_INSTALL = $(BIN)/python -m pip install --quiet --disable-pip-version-check

.PHONY: serve test lint install install-test lock clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Runtime only: what `metawsm serve` needs.
$(VENV)/.runtime: $(BIN)/python pyproject.toml $(RUNTIME_LOCK) scripts/check_lock.py
	$(BIN)/python scripts/check_lock.py $(RUNTIME_LOCK)
	$(PIP_INSTALL) --require-hashes --no-deps -r $(RUNTIME_LOCK)
	$(PIP_INSTALL) --no-deps --no-build-isolation -e .
	touch $@

# Runtime plus the test extras.
$(VENV)/.test: $(BIN)/python pyproject.toml $(TEST_LOCK) scripts/check_lock.py
	$(BIN)/python scripts/check_lock.py $(TEST_LOCK) --extra test
	$(PIP_INSTALL) --require-hashes --no-deps -r $(TEST_LOCK)
	$(PIP_INSTALL) --no-deps --no-build-isolation -e .
	touch $@ $(VENV)/.runtime

install: $(VENV)/.runtime
install-test: $(VENV)/.test

serve: $(VENV)/.runtime
	$(BIN)/metawsm serve $(ARGS)

# Lint and types first: ruff's rules and mypy's settings are in pyproject.toml.
lint: $(VENV)/.test
	$(BIN)/ruff check metawsm tests scripts bench
	$(BIN)/mypy

ifeq ($(BROWSER),0)
test: lint
	$(BIN)/pytest -m "not browser" $(PYTEST_ARGS)
else
test: lint
	./scripts/ensure-chromium
	$(BIN)/pytest $(PYTEST_ARGS)
endif

# Re-resolve the locks from pyproject.toml's ranges (maintainers; needs the package index).
# `make lock` keeps current pins where they still fit; `make lock UPGRADE=--upgrade` takes
# the newest of everything, `UPGRADE="--upgrade-package msgspec"` just one package.
LOCK_TOOLS = $(VENV)-lock
PIP_COMPILE = $(LOCK_TOOLS)/bin/pip-compile --quiet --generate-hashes --allow-unsafe --strip-extras \
	--all-build-deps --no-emit-index-url --no-emit-find-links $(UPGRADE)
lock:
	test -x $(LOCK_TOOLS)/bin/pip-compile || { $(PYTHON) -m venv $(LOCK_TOOLS) && \
		$(LOCK_TOOLS)/bin/pip install --quiet 'pip-tools==7.6.2'; }
	$(PIP_COMPILE) --output-file $(RUNTIME_LOCK) pyproject.toml
	$(PIP_COMPILE) --extra test -c $(RUNTIME_LOCK) --output-file $(TEST_LOCK) pyproject.toml

clean:
	rm -rf $(VENV) $(LOCK_TOOLS) .pytest_cache
