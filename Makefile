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

test: lint browser
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python -m pip install -q -e ".[dev,taskiq,hatchet,ui,bench]"
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .mageflow .pytest_cache .mypy_cache .ruff_cache
