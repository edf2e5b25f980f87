# cruijff-kit: `make demo` runs the demo experiment, `make test` runs the whole test suite.
# Both create .venv and install the core and every plugin (editable) first.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
PLUGINS = $(sort $(dir $(wildcard plugins/*/*/pyproject.toml)))
FAST   ?=
CK_SLOW ?= 1
PYTEST_ARGS ?=

.PHONY: install demo test lint clean

$(VENV)/.installed: constraints.txt requirements-dev.txt core/pyproject.toml $(wildcard plugins/*/*/pyproject.toml)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e "core[plots,models,data]" $(addprefix -e ,$(PLUGINS)) -r requirements-dev.txt
	touch $@

install: $(VENV)/.installed

demo: install
	$(PY) examples/demo.py $(if $(FAST),--fast,)

test: install
	CK_SLOW=$(CK_SLOW) $(PY) -m pytest -n 2 $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV)
