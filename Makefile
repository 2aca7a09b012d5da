# Two entry points do all set-up: `make demo` and `make test`. Each builds .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

.PHONY: demo test lint bench install clean browser

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev,taskiq,hatchet,ui]"
	rm -f $(VENV)/.installed-* && touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/mageflow demo

lint: $(STAMP)
	$(BIN)/ruff check mageflow tests
	$(BIN)/ruff format --check mageflow tests
	$(BIN)/mypy mageflow
	$(BIN)/lint-imports

# The browser tests drive Debian's chromium (Playwright's own browser download is not used).
# As root, install it when it is missing; otherwise those tests skip and say why.
browser:
	@command -v chromium >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    { apt-get update -qq && \
	      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
	    echo "could not install chromium: the browser tests will skip"; \
	  else echo "chromium is not installed (and not root): the browser tests will skip"; fi; }

# The workflow suite again with the state on a private 3-master Redis Cluster (tests/conftest.py
# starts it on loopback ports and stops it by pid; REDIS_CLUSTER_URL points at another one).
CLUSTER_SUITE := tests/store tests/test_chains.py tests/test_swarms.py tests/test_nesting.py \
	tests/test_lifecycle.py tests/test_signatures.py tests/test_kernel.py tests/test_map.py \
	tests/test_exactly_once.py tests/test_ttl.py tests/test_scheduling.py \
	tests/test_crash_recovery.py tests/test_operate.py tests/engines/test_taskiq.py

test: lint browser
	$(BIN)/python -m pytest -q
	MAGEFLOW_TEST_CLUSTER=1 $(BIN)/python -m pytest -q -p no:cacheprovider $(CLUSTER_SUITE)

bench: $(STAMP)
	$(BIN)/python -m pip install -q -e ".[dev,taskiq,hatchet,ui,bench]"
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .mageflow .pytest_cache .mypy_cache .ruff_cache
