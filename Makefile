# cruijff-kit: `make demo` runs the demo experiment, `make test` runs the whole test suite.
# Both create .venv and install the core and every plugin (editable) first.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
PLUGINS = $(sort $(dir $(wildcard plugins/*/*/pyproject.toml)))
FAST   ?=
CK_SLOW ?= 1
PYTEST_ARGS ?=

.PHONY: install system demo test lint clean

$(VENV)/.installed: constraints.txt requirements-dev.txt core/pyproject.toml $(wildcard plugins/*/*/pyproject.toml)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e "core[plots,models,data]" $(addprefix -e ,$(PLUGINS)) -r requirements-dev.txt
	touch $@

install: $(VENV)/.installed

demo: install
	$(PY) examples/demo.py $(if $(FAST),--fast,)

# System packages the tests drive: Debian's chromium (the `ck report` page is checked in it). Installed
# once, as root with apt-get; elsewhere a note, and those browser tests skip (under CI=true they fail).
system:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; \
	  else echo "make system: chromium is not installed and cannot be installed here (needs root and apt-get)"; fi; }

test: install system
	CK_SLOW=$(CK_SLOW) $(PY) -m pytest -n 2 $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV)
